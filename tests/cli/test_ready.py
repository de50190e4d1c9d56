"""When ``dgw up`` may say it is up (``dgw/ready.py``): pure decisions, table-tested."""

from __future__ import annotations

from datetime import UTC, datetime

from dgw.ready import EnvoyView, pending, refused
from envoy_proxy.admin import parse_healthy_hosts
from xds_server.cache.status import Nack, NodeStatus, TypeStatus
from xds_server.config import load_shard_text
from xds_server.resources import LISTENER
from xds_server.translate import build_ir

SHARD = """
proxy_config:
  public_listeners:
    api: {mode: http, path: 18080}
    rpc: {mode: grpc, path: 18980}
container_dals:
  thrift: {container_listeners: {api: 8081, rpc: 8981}}
  cql: {container_listeners: {api: 8081, rpc: 8981}}
wiring:
  thrift: {mode: shadow, target: cql}
"""
IR = build_ir(load_shard_text(SHARD, "demo.yaml").runtime())
PRIMARY = {u.name: 1 for u in IR.upstreams if u.dal == "thrift"}


def test_serving_needs_listeners_healthy_primaries_and_an_answer() -> None:
    serving = EnvoyView(frozenset({18080, 18980}), PRIMARY, {18080: 200})
    assert pending(IR, serving) == []

    assert pending(IR, EnvoyView(frozenset({18080}), PRIMARY, {18080: 200})) == [
        "Envoy is not listening on port 18980 (rpc) yet"
    ]
    no_hosts = pending(IR, EnvoyView(frozenset({18080, 18980}), {}, {18080: 200}))
    assert len(no_hosts) == 2 and all(w.startswith("no healthy host in cluster") for w in no_hosts)
    assert pending(IR, EnvoyView(frozenset({18080, 18980}), PRIMARY, {18080: 503})) == [
        "a request to port 18080 gets 503"
    ]


def test_a_shadow_target_does_not_hold_up_serving() -> None:
    assert all(u.dal == "thrift" for u in IR.upstreams if u.name in PRIMARY)
    assert pending(IR, EnvoyView(frozenset({18080, 18980}), PRIMARY, {18080: 200})) == []


def _status(message: str, nacked: str = "v2", sent: str = "v2") -> NodeStatus:
    nack = Nack(nacked, message, datetime.now(UTC))
    return NodeStatus("demo", "local-1", "sotw", datetime.now(UTC),
                      {LISTENER: TypeStatus(LISTENER, sent, "v1", nack)})


def test_a_refused_bind_names_the_port() -> None:
    problem = refused([_status("Error adding/updating listener(s) demo.api: cannot bind "
                               "'127.0.0.1:18080': Address already in use\n")])

    assert problem is not None and problem.port == 18080
    assert str(problem) == "Envoy cannot listen on 127.0.0.1:18080: Address already in use"


def test_a_nack_of_a_replaced_version_is_history() -> None:
    assert refused([_status("cannot bind '127.0.0.1:18080': Address already in use", nacked="v2", sent="v3")]) is None


def test_clusters_text_counts_healthy_hosts() -> None:
    text = (
        "demo.thrift.api::default_priority::max_connections::1024\n"
        "demo.thrift.api::127.0.0.1:20002::health_flags::healthy\n"
        "demo.cql.api::127.0.0.1:20000::health_flags::/eds_status_unhealthy\n"
    )
    assert parse_healthy_hosts(text) == {"demo.thrift.api": 1, "demo.cql.api": 0}
