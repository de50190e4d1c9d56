"""What a wave's shards look like now, as plain data for the step function.

Per shard: the config version the server serves, every node of it — an Envoy with an
xDS stream (its sync state, from the status module), a sidecar's report (the config
it runs, its DALs' health, builds it refused, its location), or both — and its
traffic over a window from the nodes' Envoy stats (``node_stats``): per HTTP listener
what clients got, per DAL cluster what the DAL answered. Reading only; nothing here
decides.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from dgw_api.v1 import gateway_pb2
from xds_server.node_stats import cluster_summary, listener_summary
from xds_server.shards import ShardRegistry
from xds_server.status import node_types

from .model import Figure


@dataclass(frozen=True)
class NodeView:
    node: str
    location: str  # account/region[/stack] as the node reports it; "" when it does not
    xds: str | None  # None: no xDS stream; "SYNCED"; "STALE: CDS, LDS"; "NACKED CDS: message"
    config_version: str | None  # what its sidecar runs (None: no report)
    dals: Mapping[str, tuple[str, str]] = field(default_factory=dict)  # DAL → (health, message)
    refused: Mapping[str, str] = field(default_factory=dict)  # DAL → why its build was refused

    @property
    def where(self) -> str:
        return f"{self.node} ({self.location})" if self.location else self.node


@dataclass(frozen=True)
class ShardView:
    shard: str
    served: str | None  # the config version the server serves (None: no config)
    nodes: tuple[NodeView, ...] = ()
    traffic: tuple[Figure, ...] = ()


def location_text(location: gateway_pb2.Location) -> str:
    parts = [location.account, location.region, *([location.stack] if location.stack else [])]
    return "/".join(parts) if any(parts) else ""


def _xds(registry: ShardRegistry, shard: str) -> dict[str, str]:
    cache = registry.cache
    states: dict[str, str] = {}
    for node in cache.node_status(shard):
        view = cache.view(node.shard, node.node_id)
        types = node_types(node, view.versions() if view else None)
        nacked = [(n, t.nack or "") for n, t in types.items() if t.state == "NACKED"]
        stale = [n for n, t in types.items() if t.state == "STALE"]
        if nacked:
            states[node.node_id] = f"NACKED {nacked[0][0]}: {nacked[0][1][:300]}"
        elif stale:
            states[node.node_id] = "STALE: " + ", ".join(stale)
        else:
            states[node.node_id] = "SYNCED"
    return states


def observe(registry: ShardRegistry, shards: Iterable[str], window_s: float, now: float) -> dict[str, ShardView]:
    views: dict[str, ShardView] = {}
    health = gateway_pb2.Health.Name
    for shard in shards:
        state = registry.shards.get(shard)
        if state is None:
            views[shard] = ShardView(shard, None)
            continue
        xds = _xds(registry, shard)
        nodes: list[NodeView] = []
        for node_id in sorted(set(xds) | set(state.nodes)):
            held = state.nodes.get(node_id)
            if held is None:
                nodes.append(NodeView(node_id, "", xds.get(node_id), None))
                continue
            report = held.report
            dals: dict[str, tuple[str, str]] = {}
            order = {"HEALTHY": 0, "STARTING": 1, "DRAINING": 2, "HEALTH_UNKNOWN": 3, "UNHEALTHY": 4}
            for e in report.endpoints:
                mine = (health(e.health), e.message)
                if e.dal not in dals or order.get(mine[0], 3) > order.get(dals[e.dal][0], 3):
                    dals[e.dal] = mine
            refused = {k.removeprefix("refused.dal."): v for k, v in report.status.items()
                       if k.startswith("refused.dal.")}  # fmt: skip
            nodes.append(NodeView(node_id, location_text(report.location), xds.get(node_id),
                                  report.status.get("config_version"), dals, refused))  # fmt: skip
        window, _ = registry.stats.window(shard, window_s, now)
        figures = [Figure(f"listener {lst.listener}", t.requests, t.errors)
                   for lst in state.ir.listeners if lst.protocol != "tcp"
                   for t in [listener_summary(window, lst.listener)]]  # fmt: skip
        figures += [Figure(f"cluster {u.name}", t.requests, t.errors)
                    for u in state.ir.upstreams for t in [cluster_summary(window, u.name)]]  # fmt: skip
        views[shard] = ShardView(shard, state.config_version, tuple(nodes), tuple(figures))
    return views
