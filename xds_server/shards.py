"""The live state of every shard: its accepted config, its IR, its nodes' reports.

This is where the pipeline's stages meet: a config that passed validation is
translated (pure) and handed to the snapshot cache; a node's endpoint report becomes
that node's EDS; registrations of healthy nodes become discovery entries. Nothing
here speaks a protocol: the ADS server, the Gateway gRPC service and the admin API
all call into it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import ipaddress
import logging
import time
from dataclasses import dataclass, field

import yaml

from dgw_api.v1 import gateway_pb2
from xds_server.cache import SnapshotCache
from xds_server.config import ConfigError, ShardFile
from xds_server.discovery import Discovery
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
    config_yaml: str
    config_version: str
    accepted_at: float
    nodes: dict[str, NodeState] = field(default_factory=dict)


@dataclass(frozen=True)
class Rejection:
    """A config that was refused; the running config of the shard stayed in force."""

    shard: str
    source: str
    errors: list[str]
    at: float


def config_yaml(config: ShardFile) -> str:
    """The runtime config as the sidecars receive it: interpolated, validated YAML."""
    return yaml.safe_dump(config.runtime().model_dump(mode="json"), sort_keys=True)


def check_report(report: gateway_pb2.NodeReport) -> None:
    """Envoy rejects a whole assignment over one bad endpoint; refuse it here instead."""
    if not report.shard or not report.node_id:
        raise ValueError("a report needs shard and node_id")
    for e in report.endpoints:
        name = f"endpoint {e.dal or '?'}.{e.listener or '?'}"
        if not e.dal or not e.listener:
            raise ValueError(f"{name} needs dal and listener")
        try:
            ipaddress.ip_address(e.address)
        except ValueError:
            raise ValueError(f"{name}: address {e.address!r} must be an IP address") from None
        if not 0 < e.port < 65536:
            raise ValueError(f"{name}: port {e.port} must be 1-65535")
    if report.registrations:
        try:
            ipaddress.ip_address(report.host_address)
        except ValueError:
            raise ValueError(
                f"host_address {report.host_address!r} must be an IP address to register "
                "(clients' proxies connect to it)"
            ) from None


class ShardRegistry:
    def __init__(self, cache: SnapshotCache, options: TranslateOptions | None = None):
        self.cache = cache
        self.options = options or TranslateOptions()
        self.shards: dict[str, Shard] = {}
        self.rejections: dict[str, Rejection] = {}
        # Reports can arrive before their shard's config does; keep them until it does.
        self._early_reports: dict[str, dict[str, NodeState]] = {}
        self._config_changed: dict[str, asyncio.Event] = {}
        self._discovery = Discovery(cache)

    # --- configuration -------------------------------------------------------

    def apply(self, shard: str, config: ShardFile, source: str) -> bool:
        """Translate and install a validated config. Raises ConfigError (and changes
        nothing) when it cannot be translated. Returns True if the config changed."""
        options = dataclasses.replace(self.options, file=source)
        started = time.perf_counter()
        try:
            ir = build_ir(config.runtime(), options)
        except ConfigError as e:
            self.reject(shard, source, e)
            raise
        text = config_yaml(config)
        version = hashlib.sha256(text.encode()).hexdigest()[:16]
        current = self.shards.get(shard)
        if current is not None and current.config_version == version:
            self.rejections.pop(shard, None)
            return False
        nodes = current.nodes if current else self._early_reports.pop(shard, {})
        state = Shard(shard, config, ir, source, text, version, time.time(), nodes)
        changed = self.cache.set_shard(shard, to_resources(ir))
        for node_id, node in nodes.items():
            self._install_endpoints(state, node_id, node.report)
        self.shards[shard] = state
        self._discovery.declare(config)
        self._register(state, nodes.values())
        self.rejections.pop(shard, None)
        self._wake(shard)
        log.info(
            "event=config_applied shard=%s source=%s config_version=%s xds_changed=%s translate_ms=%.2f",
            shard, source, version, changed, (time.perf_counter() - started) * 1000,
        )
        return True

    def reject(self, shard: str, source: str, error: ConfigError) -> None:
        errors = [str(p) for p in error.problems]
        self.rejections[shard] = Rejection(shard, source, errors, time.time())
        running = self.shards.get(shard)
        log.warning(
            "event=config_rejected shard=%s source=%s running_version=%s errors=%r",
            shard, source, running.config_version if running else "none", errors,
        )

    def remove(self, shard: str) -> None:
        state = self.shards.pop(shard, None)
        if state is None:
            return
        self.cache.remove_shard(shard)
        self.rejections.pop(shard, None)
        self._discovery.drop_shard(shard)
        self._wake(shard)
        log.info("event=shard_removed shard=%s", shard)

    # --- reports -------------------------------------------------------------

    def report(self, report: gateway_pb2.NodeReport) -> int:
        """Replace a node's report; its endpoints become that node's EDS at once.
        Raises ValueError (and keeps the previous report) if the report is unusable."""
        check_report(report)
        shard = self.shards.get(report.shard)
        nodes = shard.nodes if shard else self._early_reports.setdefault(report.shard, {})
        previous = nodes.get(report.node_id)
        generation = (previous.generation if previous else 0) + 1
        nodes[report.node_id] = NodeState(report, generation, time.time())
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

    def _install_endpoints(self, shard: Shard, node_id: str, report: gateway_pb2.NodeReport) -> None:
        self.cache.set_node_endpoints(shard.name, node_id, endpoints_for(shard.ir, report.endpoints))

    def discovery(self, address: str) -> list[dict]:
        """The hosts registered under a discovery name (only healthy ones register)."""
        return self._discovery.hosts(address)

    def _register(self, shard: Shard, nodes) -> None:
        ports = {
            name: lst.address.port
            for name, lst in shard.config.proxy_config.public_listeners.items()
            if lst.address.port
        }
        self._discovery.update(shard.name, ports, [node.report for node in nodes])

    # --- config watch (sidecars) --------------------------------------------

    async def watch_config(self, shard: str):
        """Yield the shard's Shard state now (if any) and after every change."""
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
