"""Fleet status, as ``istioctl proxy-status`` shows it: per node and xDS type, SYNCED,
STALE, NACKED or NOT_SENT. Pure: what the ADS streams recorded goes in
(``NodeStatus``), with the versions each node should have now; rows come out.

Per type, in this order:

- **NACKED**: the node rejected the latest response sent to it and still runs the
  version before (Envoy keeps its last good config); Envoy's message is kept. It
  stays NACKED until a newer version is sent, or until the version the node runs is
  again the one it should have (a rollback: nothing needs sending).
- **STALE**: the cache changed since the stream last looked (a push is on its way),
  or a response is sent and not yet ACKed, or the node holds an older version.
- **NOT_SENT**: nothing of the type was sent and the node holds nothing we know of
  (it did not ask for the type, or the shard has no config yet).
- **SYNCED**: the node ACKed the version it should have. A node that reconnects
  holding the current version is SYNCED without a push.

A node is *in sync* when none of its types is STALE or NACKED: what
``dgw status --wait`` waits for.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from xds_server.cache.status import NodeStatus, TypeStatus
from xds_server.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET

SyncState = Literal["SYNCED", "STALE", "NACKED", "NOT_SENT"]

# The types a row always shows (and SDS when the node asked for secrets).
STATUS_TYPES: dict[str, str] = {CLUSTER: "CDS", ENDPOINT: "EDS", LISTENER: "LDS", ROUTE: "RDS"}
OPTIONAL_TYPES: dict[str, str] = {SECRET: "SDS"}


@dataclass(frozen=True)
class TypeSync:
    state: SyncState
    sent_version: str | None
    acked_version: str | None
    nack: str | None  # the last NACK's message (kept after a newer version is ACKed)

    def to_dict(self) -> dict[str, Any]:
        return {"state": self.state, "sent_version": self.sent_version,
                "acked_version": self.acked_version, "nack": self.nack}  # fmt: skip


def type_state(
    status: TypeStatus, due: str | None, evaluated: str | None, current: str | None
) -> SyncState:
    """One type's state. ``due``: the version the stream would have the node hold, as of
    the view it last worked from, whose version of the type was ``evaluated``;
    ``current``: that type's version in the cache's view now (None: no config)."""
    sent, acked, nack = status.sent_version, status.acked_version, status.last_nack
    rejected = nack is not None and nack.version and nack.version == sent and acked != sent
    # A rejected version that is no longer wanted (a rollback to what the node runs) is
    # no longer a NACK to show: the node holds what it should.
    if rejected and (due is None or due != acked):
        return "NACKED"
    if current is not None and evaluated != current:
        return "STALE"
    if sent is None:
        return "SYNCED" if acked is not None and acked == due else "NOT_SENT"
    if acked == (due if due is not None else sent):
        return "SYNCED"
    return "STALE"


def type_sync(status: TypeStatus, due: str | None, evaluated: str | None, current: str | None) -> TypeSync:
    nack = status.last_nack.message if status.last_nack is not None else None
    return TypeSync(type_state(status, due, evaluated, current), status.sent_version,
                    status.acked_version, nack)  # fmt: skip


def node_types(node: NodeStatus, current: Mapping[str, str] | None) -> dict[str, TypeSync]:
    """Every type a row shows, keyed by its short name (CDS, EDS, ...)."""
    shown = dict(STATUS_TYPES)
    shown.update({t: n for t, n in OPTIONAL_TYPES.items() if t in node.types})
    return {
        name: type_sync(
            node.type_status(type_url),
            node.due.get(type_url),
            node.evaluated.get(type_url),
            current.get(type_url) if current is not None else None,
        )
        for type_url, name in shown.items()
    }


def in_sync(types: Mapping[str, TypeSync]) -> bool:
    return all(t.state not in ("STALE", "NACKED") for t in types.values())


def dal_health(endpoints: Iterable[tuple[str, str, str, str]]) -> dict[str, dict[str, Any]]:
    """Per DAL, from a sidecar's report (dal, listener, health, message): the worst
    health of its listeners, and each listener's."""
    order = {"HEALTHY": 0, "STARTING": 1, "DRAINING": 2, "HEALTH_UNKNOWN": 3, "UNHEALTHY": 4}
    dals: dict[str, dict[str, Any]] = {}
    for dal, listener, health, message in endpoints:
        entry = dals.setdefault(dal, {"health": health, "listeners": {}})
        entry["listeners"][listener] = {"health": health, "message": message}
        if order.get(health, 3) > order.get(entry["health"], 3):
            entry["health"] = health
    return dict(sorted(dals.items()))


def node_row(
    node: NodeStatus, current: Mapping[str, str] | None, dals: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """One row of ``GET /v1/status``."""
    types = node_types(node, current)
    return {
        "shard": node.shard,
        "node": node.node_id,
        "protocol": node.stream,
        "connected_since": node.connected_since.isoformat(),
        "in_sync": in_sync(types),
        "types": {name: t.to_dict() for name, t in types.items()},
        "dals": dals,
    }
