"""The fleet status model (``xds_server.status``): recorded stream state in, SYNCED /
STALE / NACKED / NOT_SENT out. Pure, so a table says it all."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from xds_server.cache.status import Nack, NodeStatus, TypeStatus
from xds_server.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET
from xds_server.status import dal_health, in_sync, node_row, node_types, type_state

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def nack(version: str, message: str = "port in use") -> Nack:
    return Nack(version, message, T0)


# (sent, acked, nack, due, evaluated, current) → state
CASES = [
    ("never asked for the type", (None, None, None, None, "v1", "v1"), "NOT_SENT"),
    ("just connected, the stream has not looked yet", (None, None, None, None, None, "v1"), "STALE"),
    ("no config for the shard yet", (None, None, None, None, None, None), "NOT_SENT"),
    ("sent and ACKed, cache unchanged", ("v1", "v1", None, "v1", "v1", "v1"), "SYNCED"),
    ("sent, ACK outstanding", ("v2", "v1", None, "v2", "v2", "v2"), "STALE"),
    ("cache changed, stream not yet woken", ("v1", "v1", None, "v1", "v1", "v2"), "STALE"),
    ("latest sent was rejected", ("v2", "v1", nack("v2"), "v2", "v2", "v2"), "NACKED"),
    ("rejected and the cache moved on (still rejected)", ("v2", "v1", nack("v2"), "v2", "v2", "v3"), "NACKED"),
    ("rolled back to what the node runs (nothing to send)", ("v2", "v1", nack("v2"), "v1", "v3", "v3"), "SYNCED"),
    ("rolled back, the stream has not looked yet", ("v2", "v1", nack("v2"), "v2", "v2", "v3"), "NACKED"),
    ("newer version after a NACK, not yet ACKed", ("v3", "v1", nack("v2"), "v3", "v3", "v3"), "STALE"),
    ("newer version after a NACK, ACKed", ("v3", "v3", nack("v2"), "v3", "v3", "v3"), "SYNCED"),
    ("NACK of a response we did not send", ("v1", "v1", nack(""), "v1", "v1", "v1"), "SYNCED"),
    ("reconnected holding the current version (no push)", (None, "v1", None, "v1", "v1", "v1"), "SYNCED"),
    ("reconnected holding an old version", (None, "v0", None, "v1", "v1", "v1"), "NOT_SENT"),
    ("by-name version differs from the type's (SotW EDS)", ("n1", "n1", None, "n1", "v1", "v1"), "SYNCED"),
    ("a push is due but blocked behind an earlier type", ("v1", "v1", None, "v2", "v2", "v2"), "STALE"),
    ("delta: nothing due beyond what was sent", ("v1", "v1", None, None, "v2", "v2"), "SYNCED"),
]


@pytest.mark.parametrize(("case", "given", "state"), CASES, ids=[c[0] for c in CASES])
def test_type_state(case, given, state):
    sent, acked, last_nack, due, evaluated, current = given
    status = TypeStatus(CLUSTER, sent, acked, last_nack)
    assert type_state(status, due, evaluated, current) == state


def test_a_row_shows_the_four_types_and_sds_only_when_asked_for():
    views = {t: "v1" for t in (CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET)}
    types = {t: TypeStatus(t, "v1", "v1") for t in (CLUSTER, LISTENER)}
    node = NodeStatus("kv", "n1", "sotw", T0, types, due=dict.fromkeys(types, "v1"), evaluated=views)
    shown = node_types(node, views)
    assert list(shown) == ["CDS", "EDS", "LDS", "RDS"]
    assert [s.state for s in shown.values()] == ["SYNCED", "NOT_SENT", "SYNCED", "NOT_SENT"]
    assert in_sync(shown)
    types[SECRET] = TypeStatus(SECRET, "s1", "s0", nack("s1", "bad cert"))
    row = node_row(NodeStatus("kv", "n1", "delta", T0, types, evaluated=views), views, {})
    assert row["types"]["SDS"] == {"state": "NACKED", "sent_version": "s1", "acked_version": "s0", "nack": "bad cert"}
    assert row["in_sync"] is False and row["protocol"] == "delta"


def test_dal_health_is_the_worst_of_its_listeners():
    dals = dal_health([
        ("thrift", "api", "HEALTHY", ""),
        ("thrift", "grpc", "UNHEALTHY", "exit code 137"),
        ("cql", "api", "STARTING", ""),
    ])
    assert list(dals) == ["cql", "thrift"]
    assert dals["thrift"]["health"] == "UNHEALTHY"
    assert dals["thrift"]["listeners"]["grpc"] == {"health": "UNHEALTHY", "message": "exit code 137"}
    assert dals["cql"]["health"] == "STARTING"
