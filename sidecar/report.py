"""What the host tells the xds_server: a pure function of the goal, what was
observed and Envoy's state → one ``NodeReport``.

Every DAL listener is an endpoint with its health; the host is registered in
discovery only when everything a client can reach is healthy: the DALs that serve
clients (a listener's primary or a split target) and Envoy. A shadow target gets a
copy of the traffic but never answers a client, so its health is reported and does
not take the host out of discovery.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass

from common.exits import describe_exit
from dgw_api.health import Health
from dgw_api.v1 import gateway_pb2
from xds_server.config import RuntimeConfig, listener_topology

from .desired import Desired
from .plan import Observed
from .spec import DalSpec


@dataclass(frozen=True)
class Host:
    """Who reports, and the facts about this host that do not change while it runs."""

    shard: str
    node_id: str
    bind_address: str  # where Envoy reaches the DALs
    host_address: str  # what discovery registers
    runtime: str
    network_mode: str
    # Where the host runs (--account/--region/--stack): status and rollouts group by it.
    account: str = ""
    region: str = ""
    stack: str = ""


@dataclass(frozen=True)
class EnvoyView:
    state: str  # down | starting | ready
    message: str = ""


@dataclass(frozen=True)
class Situation:
    """Everything the report is made of."""

    host: Host
    config: RuntimeConfig | None
    config_version: str
    desired: Desired
    observed: Sequence[Observed]
    action_errors: Mapping[str, str]  # dal → why its last action failed
    going: Collection[str] = ()  # DALs whose live instance is about to be stopped
    envoy: EnvoyView | None = None  # None: this agent runs no Envoy
    control_up: bool = False
    stopping: bool = False


def serving_clients(cfg: RuntimeConfig) -> set[str]:
    """The DALs a client can reach: all but those that are a shadow target on every
    listener they serve."""
    shadow_only: dict[str, bool] = {}
    for topo in listener_topology(cfg).values():
        shadows = {target for target, _ in topo.shadows}
        for dal in topo.servers:
            shadow_only[dal] = shadow_only.get(dal, True) and dal in shadows
    return {dal for dal in cfg.container_dals if not shadow_only.get(dal, False)}


def build_report(s: Situation) -> gateway_pb2.NodeReport:
    cfg = s.config
    by_dal: dict[str, list[Observed]] = {}
    for o in s.observed:
        by_dal.setdefault(o.dal, []).append(o)
    endpoints = []
    healthy: dict[str, bool] = {}
    dals = cfg.container_dals if cfg else {}
    for dal in sorted(dals):
        spec = s.desired.specs.get(dal)
        inst = current_instance(by_dal.get(dal, []), spec)
        error = s.action_errors.get(dal, "") or s.desired.refused.get(dal, "")
        health, message = health_of(inst, spec, error)
        if dal in s.going:
            health, message = Health.DRAINING, "being replaced"
        healthy[dal] = health.serving
        for listener in sorted(dals[dal].container_listeners):
            port = None
            if inst is not None and inst.live:
                port = inst.ports.get(listener)
            if port is None and spec is not None:
                port = spec.host_ports.get(listener)
            if port is None:
                continue
            endpoints.append(
                gateway_pb2.Endpoint(
                    dal=dal,
                    listener=listener,
                    address=s.host.bind_address,
                    port=port,
                    health=(Health.DRAINING if s.stopping else health).to_pb(),
                    message=message,
                )
            )
    registered = cfg is not None and _registrable(cfg, s.desired, healthy, s.envoy, s.stopping)
    registrations: list[str] = []
    if registered and cfg is not None:
        registrations = [a for r in cfg.registrations for a in r.addresses()]
    status = {
        "runtime": s.host.runtime,
        "network_mode": s.host.network_mode,
        "config_version": s.config_version,
        "control": "connected" if s.control_up else "disconnected",
        "state": "stopping" if s.stopping else ("serving" if registered else "converging"),
    }
    if s.envoy is not None:
        status["envoy"] = s.envoy.state
        if s.envoy.message:
            status["envoy.message"] = s.envoy.message
    for key, message in sorted(s.desired.errors.items()):
        status[f"error.{key}"] = message
    for dal, message in sorted(s.action_errors.items()):
        status.setdefault(f"error.dal.{dal}", message)
    for dal, message in sorted(s.desired.refused.items()):
        status[f"refused.dal.{dal}"] = message
    host = s.host
    location = None
    if host.account or host.region or host.stack:
        location = gateway_pb2.Location(account=host.account, region=host.region, stack=host.stack)
    return gateway_pb2.NodeReport(
        shard=s.host.shard,
        node_id=s.host.node_id,
        endpoints=endpoints,
        registrations=registrations,
        host_address=s.host.host_address,
        status=status,
        location=location,
    )


def _registrable(
    cfg: RuntimeConfig,
    desired: Desired,
    healthy: Mapping[str, bool],
    envoy: EnvoyView | None,
    stopping: bool,
) -> bool:
    if stopping or (envoy is not None and envoy.state != "ready"):
        return False
    clients = serving_clients(cfg)
    hidden = {f"dal.{dal}" for dal in set(cfg.container_dals) - clients}
    if set(desired.errors) - hidden:
        return False
    return all(healthy.get(dal, False) for dal in clients)


def health_of(inst: Observed | None, spec: DalSpec | None, error: str) -> tuple[Health, str]:
    """A DAL's reported health and the message that explains it."""
    if inst is None:
        return (Health.UNHEALTHY, error) if error else (Health.STARTING, "creating")
    if not inst.live and spec is not None and inst.spec_hash != spec.spec_hash and not error:
        # An instance of the old spec that stopped: the new one is on its way.
        return Health.STARTING, "being replaced"
    if not inst.live:
        return Health.UNHEALTHY, error or describe_exit(inst.exit_code)
    match inst.health:
        case Health.UNHEALTHY:
            return Health.UNHEALTHY, error or "health check failing"
        case Health.STARTING:
            if spec is not None and spec.healthcheck is None:
                return Health.STARTING, "not accepting connections yet"
            return Health.STARTING, "health check not passed yet"
        case Health.NONE | Health.HEALTHY:
            return Health.HEALTHY, ""
        case Health.DRAINING | Health.UNKNOWN:
            return inst.health, ""


def current_instance(instances: Iterable[Observed], spec: DalSpec | None) -> Observed | None:
    """The instance the report speaks of: the right spec first, then running, then
    the most recently started."""
    want = spec.spec_hash if spec else ""
    ranked = sorted(
        instances, key=lambda o: (o.spec_hash != want, not o.live, -(o.started_at or 0.0))
    )
    return ranked[0] if ranked else None


def got_worse(before: gateway_pb2.NodeReport | None, after: gateway_pb2.NodeReport) -> bool:
    """Whether an endpoint that was healthy is not any more (Envoy must hear at once)."""
    was_healthy = {
        (e.dal, e.listener)
        for e in (before.endpoints if before else [])
        if e.health == gateway_pb2.HEALTHY
    }
    return any(
        (e.dal, e.listener) in was_healthy and e.health != gateway_pb2.HEALTHY
        for e in after.endpoints
    )
