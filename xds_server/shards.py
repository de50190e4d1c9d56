"""The live state of every shard: its accepted config, its IR, its nodes' reports.

This is where the pipeline's stages meet: a config that passed validation is
translated (pure) and handed to the snapshot cache; a node's endpoint report becomes
that node's EDS; registrations of healthy nodes become discovery entries. Nothing
here speaks a protocol: the ADS server, the Gateway gRPC service and the admin API
all call into it.

Every report is bounded (``Limits``) before anything is indexed, and a report that
is refused changes nothing. A node that stops reporting for ``report_ttl_s`` is
forgotten (``expire_reports``). Reports are what a restarted server needs to give
each Envoy its endpoints at once, so the server persists them (``report_file``);
``dirty`` says there is something new to write.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import hashlib
import ipaddress
import json
import logging
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Protocol

import yaml

from common.names import (
    DISCOVERY_ADDRESS_RULE,
    NODE_ID_RULE,
    SHARD_RULE,
    is_config_name,
    is_discovery_address,
    is_node_id,
    is_shard,
)
from dgw_api.v1 import gateway_pb2
from xds_server import metrics
from xds_server.cache import SnapshotCache
from xds_server.config import ConfigError, Problem, ShardFile, mask_data, quote, shown_problems
from xds_server.config.masking import masking
from xds_server.deploy.artifacts import Pins, pins_json
from xds_server.discovery import Discovery
from xds_server.node_stats import StatsBook, check_stats
from xds_server.resources import Resources
from xds_server.settings import Limits
from xds_server.translate import GatewayIR, TranslateOptions, build_ir, endpoints_for, to_resources

log = logging.getLogger("xds_server.shards")


@dataclass
class NodeState:
    """What one node (gateway instance) last reported."""

    report: gateway_pb2.NodeReport
    generation: int
    received_at: float


@dataclass
class Shard:
    name: str
    config: ShardFile
    ir: GatewayIR
    source: str
    config_version: str
    accepted_at: float
    nodes: dict[str, NodeState] = field(default_factory=dict)
    # Values interpolated from the environment: the sidecars get them, people see ***.
    secrets: frozenset[str] = frozenset()
    # What its version set resolved to when this version was stored (sent with the config).
    pins: Pins = field(default_factory=dict)

    @functools.cached_property
    def config_yaml(self) -> str:
        """What the sidecars receive (``WatchConfig``): made when first asked, not while
        a change is being pushed to the Envoys."""
        return config_yaml(self.config)

    def shown_yaml(self) -> str:
        """The config for people (admin API): every interpolated value masked."""
        if not self.secrets:
            return self.config_yaml
        data = mask_data(self.config.runtime().model_dump(mode="json"), self.secrets)
        return yaml.safe_dump(data, sort_keys=True)


@dataclass(frozen=True)
class Rejection:
    """A config that was refused; the running config of the shard stayed in force."""

    shard: str
    source: str
    errors: list[str]
    at: float


@dataclass(frozen=True)
class Prepared:
    """A config translated and ready to serve (``ShardRegistry.prepare``)."""

    shard: str
    config: ShardFile
    source: str
    secrets: frozenset[str]
    version: str  # config_version(config, pins)
    ir: GatewayIR
    resources: Resources
    started: float  # perf_counter when translation began, for the log
    pins: Pins = field(default_factory=dict)


def _version_of(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# libyaml's emitter when PyYAML has it (the pure-Python one took ~7 ms a shard); the
# same text either way.
_SafeDumper: type[yaml.SafeDumper] = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def config_yaml(config: ShardFile) -> str:
    """The runtime config as the sidecars receive it: interpolated, validated YAML."""
    return yaml.dump(config.runtime().model_dump(mode="json"), Dumper=_SafeDumper, sort_keys=True)


def _canonical(data: object) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"))


def config_version(config: ShardFile, pins: Pins | None = None) -> str:
    """The config's version: a hash of the runtime config as the sidecars get it (in
    canonical JSON: a tenth of the YAML's cost, and a 100-shard change makes 100), of
    the deploy desires that count (consumers become RBAC, so an edit of them alone
    is a new version) and of the pins its version set resolved to (a rollout that
    re-resolves a branch changes nothing else)."""
    text = _canonical(config.runtime().model_dump(mode="json"))
    if config.deploy_desires is not None:
        text += "\n" + _canonical(config.deploy_desires.model_dump(mode="json"))
    if pins:
        text += "\n" + _canonical(pins_json(pins))
    return _version_of(text)


_HEALTH_VALUES = frozenset(gateway_pb2.Health.values())


def check_report(report: gateway_pb2.NodeReport, limits: Limits | None = None) -> None:
    """Refuse a report that is too big or that Envoy would reject (it rejects a whole
    assignment over one bad endpoint). Sizes are checked before anything is walked."""
    limits = limits or Limits()
    size = report.ByteSize()
    if size > limits.report_bytes:
        raise ValueError(f"the report is {size} bytes; at most {limits.report_bytes} are accepted")
    if len(report.endpoints) > limits.endpoints_per_report:
        raise ValueError(f"{len(report.endpoints)} endpoints; a report may have at most "
                         f"{limits.endpoints_per_report}")
    if len(report.registrations) > limits.registrations_per_report:
        raise ValueError(f"{len(report.registrations)} registrations; a report may have at most "
                         f"{limits.registrations_per_report}")
    if not report.shard or not report.node_id:
        raise ValueError("a report needs shard and node_id")
    names = [("shard", report.shard), ("node_id", report.node_id)]
    names += [("registration", r) for r in report.registrations]
    names += [(f"endpoint {what}", n) for e in report.endpoints for what, n in (("dal", e.dal), ("listener", e.listener))]
    loc = report.location
    names += [("location.account", loc.account), ("location.region", loc.region), ("location.stack", loc.stack)]
    for what, name in names:
        if len(name) > limits.name_chars:
            raise ValueError(f"{what} {quote(name)} is longer than {limits.name_chars} characters")
    for e in report.endpoints:
        if not e.dal or not e.listener:
            raise ValueError(f"endpoint {quote(e.dal)}.{quote(e.listener)} needs dal and listener")
    # Every name in full (never a prefix: "demo\n" is not "demo"), before it is indexed or logged.
    grammars = {"shard": (is_shard, SHARD_RULE), "node_id": (is_node_id, NODE_ID_RULE),
                "registration": (is_discovery_address, DISCOVERY_ADDRESS_RULE)}  # fmt: skip
    for what, name in names:
        if what.startswith("location.") and not name:
            continue  # where a host runs is optional; a word when given
        check, rule = grammars.get(what, (is_discovery_address, DISCOVERY_ADDRESS_RULE)
                                   if what.startswith("location.") else (is_config_name, SHARD_RULE))  # fmt: skip
        if not check(name):
            raise ValueError(f"{what} {quote(name)} is not allowed: {rule}")
    for e in report.endpoints:
        name = f"endpoint {e.dal}.{e.listener}"
        try:
            ipaddress.ip_address(e.address)
        except ValueError:
            raise ValueError(f"{name}: address {quote(e.address)} must be an IP address") from None
        if not 0 < e.port < 65536:
            raise ValueError(f"{name}: port {e.port} must be 1-65535")
        if e.health not in _HEALTH_VALUES:
            raise ValueError(f"{name}: health {e.health} is not one of "
                             f"{', '.join(f'{v} ({k})' for k, v in gateway_pb2.Health.items())}")
    if report.registrations:
        try:
            ipaddress.ip_address(report.host_address)
        except ValueError:
            raise ValueError(
                f"host_address {quote(report.host_address)} must be an IP address to register "
                "(clients' proxies connect to it)"
            ) from None


def _declared(config: ShardFile) -> frozenset[str]:
    return frozenset(a for reg in config.registrations for a in reg.addresses())


def check_registrations(report: gateway_pb2.NodeReport, config: ShardFile | None, peer: str | None) -> None:
    """ValueError unless every registration is one the shard's config declares (when it
    has one) and ``host_address`` is where the report came from (``peer``; loopback
    for loopback: a host reaching the server over ::1 may register 127.0.0.1)."""
    if config is not None:
        undeclared = sorted(set(report.registrations) - _declared(config))
        if undeclared:
            allowed = ", ".join(sorted(_declared(config))) or "none"
            raise ValueError(f"registration {quote(undeclared[0])} is not one of shard "
                             f"{report.shard}'s registrations ({allowed}): a node registers only "
                             "under its own shard's discovery names")  # fmt: skip
    if peer is None:
        return
    host, source = ipaddress.ip_address(report.host_address), _ip(peer)
    if source is None or not (host == source or (host.is_loopback and source.is_loopback)):
        raise ValueError(f"host_address {quote(report.host_address)} is not the address this "
                         f"report came from ({quote(peer)}): a node registers only at its own "
                         "address (set the sidecar's --host-address to it)")  # fmt: skip


def _ip(peer: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(peer.strip("[]"))
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


class NodeLiveness(Protocol):
    """Who else must hear of a node's reports, and of its sidecar's connection to this
    server (``xds_server.ha.reports`` keeps them in etcd under leases for every replica)."""

    def reported(self, report: gateway_pb2.NodeReport) -> None: ...
    def sidecar_connected(self, shard: str, node_id: str) -> None: ...
    def sidecar_gone(self, shard: str, node_id: str) -> None: ...


class Alone:
    """One server: nobody else to tell (its reports go to a file, ``report_file``)."""

    def reported(self, report: gateway_pb2.NodeReport) -> None:
        pass

    def sidecar_connected(self, shard: str, node_id: str) -> None:
        pass

    def sidecar_gone(self, shard: str, node_id: str) -> None:
        pass


class ShardRegistry:
    def __init__(
        self,
        cache: SnapshotCache,
        options: TranslateOptions | None = None,
        limits: Limits | None = None,
    ):
        self.cache = cache
        self.options = options or TranslateOptions()
        self.limits = limits or Limits()
        self.dirty = False  # reports changed since the last persist
        self.shards: dict[str, Shard] = {}
        self.rejections: dict[str, Rejection] = {}
        # Reports can arrive before their shard's config does; keep them until it does.
        self._early_reports: dict[str, dict[str, NodeState]] = {}
        self._config_changed: dict[str, asyncio.Event] = {}
        self._discovery = Discovery(cache)
        self._secrets: frozenset[str] | None = None  # every served shard's, made when asked
        self.liveness: NodeLiveness = Alone()
        # Each node's recent Envoy stats (``report_stats``), for operators and judgements.
        self.stats = StatsBook(self.limits)

    # --- configuration -------------------------------------------------------

    def apply(
        self, shard: str, config: ShardFile, source: str, secrets: frozenset[str] = frozenset(),
        pins: Pins | None = None,
    ) -> bool:
        """Translate and install a checked config. Raises ConfigError (and changes
        nothing) when it cannot be translated or would take every listener away from
        connected Envoys without saying so. Returns True if the config changed."""
        current = self.shards.get(shard)
        if current is not None and current.config_version == config_version(config, pins):
            self.rejections.pop(shard, None)
            return False
        try:
            prepared = self.prepare(shard, config, source, secrets, pins)
        except ConfigError as e:
            self.reject(shard, source, e)
            raise
        return self.install(prepared)

    def prepare(
        self, shard: str, config: ShardFile, source: str, secrets: frozenset[str] = frozenset(),
        pins: Pins | None = None,
    ) -> Prepared:
        """Translate a checked config without installing it (what a change would serve).
        Raises ConfigError, fit to show (secrets masked), and records nothing."""
        started = time.perf_counter()
        try:
            self._refuse_losing_every_listener(shard, config, source)
            # The whole file: its deploy desires' consumers are the listeners' RBAC.
            with masking(secrets):
                ir = build_ir(config, dataclasses.replace(self.options, file=source))
        except ConfigError as e:
            raise ConfigError(shown_problems(e.problems, secrets, self.limits)) from None
        return Prepared(shard, config, source, secrets, config_version(config, pins), ir,
                        to_resources(ir), started, dict(pins or {}))  # fmt: skip

    def install(self, prepared: Prepared) -> bool:
        """Serve a prepared config. Returns True if the config changed."""
        shard, version = prepared.shard, prepared.version
        current = self.shards.get(shard)
        self.rejections.pop(shard, None)
        if current is not None and current.config_version == version:
            current.source = prepared.source
            return False
        nodes = current.nodes if current else self._early_reports.pop(shard, {})
        state = Shard(shard, prepared.config, prepared.ir, prepared.source, version,
                      time.time(), nodes, prepared.secrets, prepared.pins)  # fmt: skip
        changed = self.cache.set_shard(shard, prepared.resources)
        for node_id, node in nodes.items():
            self._install_endpoints(state, node_id, node.report)
        self.shards[shard] = state
        self._secrets = None
        self._discovery.declare(prepared.config)
        self._register(state, nodes.values())
        self._wake(shard)
        log.info(
            "event=config_applied shard=%s source=%s config_version=%s xds_changed=%s translate_ms=%.2f",
            shard, prepared.source, version, changed, (time.perf_counter() - prepared.started) * 1000,
        )
        return True

    def secrets(self) -> frozenset[str]:
        """Every value a served shard read from the environment (to mask them all)."""
        if self._secrets is None:
            self._secrets = frozenset().union(*(s.secrets for s in self.shards.values()))
        return self._secrets

    def resources(self, shard: str) -> Resources:
        """The Envoy resources the shard's running config translates to (none if no config)."""
        state = self.shards.get(shard)
        return to_resources(state.ir) if state is not None else Resources()

    def connected_nodes(self, shard: str) -> set[str]:
        """The nodes of the shard with an open xDS stream."""
        return {s.node_id for s in self.cache.node_status() if s.shard == shard}

    def _refuse_losing_every_listener(self, shard: str, config: ShardFile, source: str) -> None:
        current = self.shards.get(shard)
        if (
            config.proxy_config.public_listeners
            or config.allow_no_listeners
            or current is None
            or not current.config.proxy_config.public_listeners
        ):
            return
        connected = self.connected_nodes(shard)
        if connected:
            raise ConfigError([Problem(
                source, "proxy_config.public_listeners",
                f"this config has no public listener: the {len(connected)} connected Envoys of "
                f"shard {quote(shard)} would drop every listener and refuse all traffic; if that "
                "is meant, add `allow_no_listeners: true` at the top of the file",
            )])

    def reject(self, shard: str, source: str, error: ConfigError) -> None:
        """Record a refused config; ``error`` is already fit to show (secrets masked)."""
        errors = [str(p) for p in error.problems[: self.limits.problems_per_file + 1]]
        self.rejections[shard] = Rejection(shard, source, errors, time.time())
        metrics.CONFIGS_REJECTED.labels(shard).inc()
        running = self.shards.get(shard)
        log.warning(
            "event=config_rejected shard=%s source=%s running_version=%s errors=%r",
            shard, source, running.config_version if running else "none", errors,
        )

    def remove(self, shard: str) -> None:
        self.rejections.pop(shard, None)
        state = self.shards.pop(shard, None)
        if state is None:
            return
        self._secrets = None
        self.cache.remove_shard(shard)
        self._discovery.drop_shard(shard)
        self._wake(shard)
        log.info("event=shard_removed shard=%s", shard)

    # --- reports -------------------------------------------------------------

    def report(self, report: gateway_pb2.NodeReport, peer: str | None = None) -> int:
        """Replace a node's report; its endpoints become that node's EDS at once.
        Raises ValueError (and keeps the previous report) if the report is unusable.

        ``peer``: the IP address the report came from (None: from this process). A node
        registers only under its own shard's discovery names, and only at the address
        its reports come from: neither can send another shard's clients elsewhere."""
        generation = self.accept(report, time.time(), peer)
        self.liveness.reported(report)
        return generation

    def accept(self, report: gateway_pb2.NodeReport, received_at: float, peer: str | None = None) -> int:
        """``report`` without telling ``liveness``: for a report another replica received
        (which checked where it came from: ``peer`` None)."""
        check_report(report, self.limits)
        shard = self.shards.get(report.shard)
        if report.registrations:
            check_registrations(report, shard.config if shard else None, peer)
        if shard is None:
            pending = self._early_reports.get(report.shard, {})
            if report.node_id not in pending and self._pending_nodes() >= self.limits.pending_report_nodes:
                raise ValueError(
                    f"no shard {quote(report.shard)} is configured, and reports for unconfigured "
                    f"shards are kept for at most {self.limits.pending_report_nodes} nodes"
                )
        nodes = shard.nodes if shard else self._early_reports.setdefault(report.shard, {})
        previous = nodes.get(report.node_id)
        generation = (previous.generation if previous else 0) + 1
        nodes[report.node_id] = NodeState(report, generation, received_at)
        self.dirty = True
        if shard is not None:
            self._install_endpoints(shard, report.node_id, report)
            self._register(shard, [nodes[report.node_id]])
        # A sidecar re-sends an unchanged report now and then: news at INFO, repeats at DEBUG.
        news = previous is None or previous.report != report
        log.log(
            logging.INFO if news else logging.DEBUG,
            "event=report shard=%s node=%s generation=%d endpoints=%s registrations=%s",
            report.shard, report.node_id, generation,
            ",".join(
                f"{e.dal}.{e.listener}={gateway_pb2.Health.Name(e.health).lower()}"
                for e in report.endpoints
            ) or "-",
            ",".join(report.registrations) or "-",
        )
        return generation

    def restore(self, shard: str, node: NodeState) -> None:
        """Put back a report persisted before a restart (before any config is loaded:
        each shard's config then installs its nodes' endpoints as it is applied)."""
        self._early_reports.setdefault(shard, {})[node.report.node_id] = node

    def all_reports(self) -> list[tuple[str, NodeState]]:
        """Every node's last report, configured shard or not, as (shard, state)."""
        held = [(name, s.nodes) for name, s in self.shards.items()] + list(self._early_reports.items())
        return [(shard, node) for shard, nodes in held for node in nodes.values()]

    def expire_reports(self, now: float) -> int:
        """Forget nodes silent for ``report_ttl_s``: their EDS returns to the shard's
        default and their registrations go. Returns how many were forgotten."""
        deadline = now - self.limits.report_ttl_s
        expired = 0
        for name, nodes in [(n, s.nodes) for n, s in self.shards.items()] + list(self._early_reports.items()):
            for node_id in [n for n, node in nodes.items() if node.received_at < deadline]:
                self.forget(name, node_id)
                expired += 1
                log.info("event=report_expired shard=%s node=%s ttl_s=%g", name, node_id,
                         self.limits.report_ttl_s)
        self.stats.expire(now, self.limits.report_ttl_s)
        if expired:
            self.dirty = True
        return expired

    def forget(self, shard: str, node_id: str) -> bool:
        """Drop a node's report: its EDS returns to the shard's default and its
        registrations go. False if there was none."""
        state = self.shards.get(shard)
        nodes = state.nodes if state is not None else self._early_reports.get(shard, {})
        if nodes.pop(node_id, None) is None:
            return False
        self.dirty = True
        if state is not None:
            self.cache.set_node_endpoints(shard, node_id, None)
            self._register(state, [NodeState(gateway_pb2.NodeReport(node_id=node_id), 0, time.time())])
        elif not nodes:
            self._early_reports.pop(shard, None)
        return True

    def report_stats(self, stats: gateway_pb2.EnvoyStats, now: float) -> None:
        """Keep a node's Envoy stats. Only a node that has reported is heard (so the
        book holds no more nodes than the registry); raises ValueError otherwise, or
        when the sample is over a limit."""
        check_stats(stats, self.limits)
        shard = self.shards.get(stats.shard)
        known = shard.nodes if shard is not None else self._early_reports.get(stats.shard, {})
        if stats.node_id not in known:
            raise ValueError(f"node {stats.node_id[:80]!r} of shard {stats.shard[:80]!r} has not "
                             "reported yet: send its report first")  # fmt: skip
        self.stats.add(stats, now)

    def _pending_nodes(self) -> int:
        return sum(len(nodes) for nodes in self._early_reports.values())

    def _install_endpoints(self, shard: Shard, node_id: str, report: gateway_pb2.NodeReport) -> None:
        self.cache.set_node_endpoints(shard.name, node_id, endpoints_for(shard.ir, report.endpoints))

    def discovery(self, address: str) -> list[dict[str, object]]:
        """The hosts registered under a discovery name (only healthy ones register)."""
        return self._discovery.hosts(address)

    def _register(self, shard: Shard, nodes: Iterable[NodeState]) -> None:
        ports = {
            name: lst.address.port
            for name, lst in shard.config.proxy_config.public_listeners.items()
            if lst.address.port
        }
        # Reports kept from before the config (or before a restart) name what they
        # named then: only the names this config declares are indexed.
        declared = _declared(shard.config)
        self._discovery.update(shard.name, ports, [node.report for node in nodes], declared)

    # --- config watch (sidecars) --------------------------------------------

    async def watch_config(self, shard: str, node_id: str = "") -> AsyncIterator[Shard]:
        """Yield the shard's Shard state now (if any) and after every change. A watch
        that names its node is that node's sidecar connection: ``liveness`` hears of it."""
        if node_id:
            self.liveness.sidecar_connected(shard, node_id)
        try:
            async for state in self._watch_config(shard):
                yield state
        finally:
            if node_id:
                self.liveness.sidecar_gone(shard, node_id)

    async def _watch_config(self, shard: str) -> AsyncIterator[Shard]:
        sent: str | None = None
        while True:
            event = self._config_changed.setdefault(shard, asyncio.Event())
            state = self.shards.get(shard)
            version = state.config_version if state else None
            if state is not None and version != sent:
                sent = version
                yield state
                continue
            await event.wait()

    def _wake(self, shard: str) -> None:
        event = self._config_changed.pop(shard, None)
        if event is not None:
            event.set()
