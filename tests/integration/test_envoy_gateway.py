"""The control plane against the real Envoy, over SotW and delta ADS.

Each test builds a shard file, starts sample DALs and reports their endpoints the
way a sidecar does, then checks what a client of the gateway sees.
"""

from __future__ import annotations

import http.client
import json
import socket
import time

import pytest

from testkit.ports import free_port, port_open
from testkit.wait import wait_until

from .conftest import answered_by, dal_requests, grpc_echo, healthy, http_get

pytestmark = pytest.mark.envoy


def test_http_and_grpc_requests_reach_the_dal(stack):
    api, rpc, dal_api, dal_rpc = free_port(), free_port(), free_port(), free_port()
    stack.server.write_shard("kv", {
        "proxy_config": {"public_listeners": {
            "api": {"mode": "http", "path": api},
            "secure_grpc": {"mode": "grpc", "path": str(rpc)},
        }},
        "container_dals": {"kv": {"container_listeners": {"api": dal_api, "secure_grpc": dal_rpc}}},
    })
    stack.dal("kv", {"api": dal_api, "secure_grpc": dal_rpc})
    stack.server.report("kv", "node-1", [healthy("kv", "api", dal_api), healthy("kv", "secure_grpc", dal_rpc)])
    stack.envoy("kv")

    assert wait_until(lambda: answered_by(api, "/v1/get") == "kv", 10, what="HTTP through envoy")
    assert wait_until(lambda: grpc_echo(rpc, b"ping"), 10, what="gRPC through envoy") == b"kv:ping"


def _shadow_shard(stack, api: int, rpc: int, ports: dict[str, dict[str, int]]) -> None:
    stack.server.write_shard("mig", {
        "proxy_config": {"public_listeners": {
            "api": {"mode": "http", "path": api},
            "secure_grpc": {"mode": "grpc", "path": rpc},
        }},
        "container_dals": {
            name: {"container_listeners": p} for name, p in ports.items()
        },
        "wiring": {"thrift": {"mode": "shadow", "target": "cql"}},
    })


def test_shadow_target_gets_a_copy_of_every_request(stack):
    api, rpc = free_port(), free_port()
    ports = {n: {"api": free_port(), "secure_grpc": free_port()} for n in ("thrift", "cql")}
    _shadow_shard(stack, api, rpc, ports)
    for name, p in ports.items():
        stack.dal(name, p)
    stack.server.report("mig", "node-1", [
        healthy(n, lst, port) for n, p in ports.items() for lst, port in p.items()
    ])
    stack.envoy("mig")
    wait_until(lambda: answered_by(api) == "thrift", 10, what="primary through envoy")
    before_primary, before_target = dal_requests(ports["thrift"]["api"]), dal_requests(ports["cql"]["api"])

    answers = [answered_by(api, f"/item/{i}") for i in range(20)]
    replies = [grpc_echo(rpc, b"x%d" % i) for i in range(10)]

    assert answers == ["thrift"] * 20, "the client must see only the primary's answers"
    assert replies == [b"thrift:x%d" % i for i in range(10)]
    assert dal_requests(ports["thrift"]["api"]) - before_primary == 30
    wait_until(lambda: dal_requests(ports["cql"]["api"]) - before_target == 30, 10,
             what="every request mirrored to the shadow target")


def test_shadow_target_down_or_slow_does_not_touch_the_client(stack):
    api, rpc = free_port(), free_port()
    ports = {n: {"api": free_port(), "secure_grpc": free_port()} for n in ("thrift", "cql")}
    _shadow_shard(stack, api, rpc, ports)
    stack.dal("thrift", ports["thrift"])
    stack.dal("cql", ports["cql"], SAMPLE_DELAY_MS="3000")
    stack.server.report("mig", "node-1", [
        healthy(n, lst, port) for n, p in ports.items() for lst, port in p.items()
    ])
    stack.envoy("mig")
    wait_until(lambda: answered_by(api) == "thrift", 10, what="primary through envoy")

    # Slow target: every answer still comes from the primary, long before the
    # target's 3 s delay could have elapsed (Envoy's mirror is fire-and-forget).
    for i in range(5):
        started = time.monotonic()
        assert answered_by(api, f"/slow/{i}") == "thrift"
        assert grpc_echo(rpc, b"s") == b"thrift:s"
        assert time.monotonic() - started < 2.0
    wait_until(lambda: dal_requests(ports["cql"]["api"]) >= 1, 10, what="slow target still mirrored")

    # Target down: the primary answers every request all the same.
    stack.dals["cql"].kill()
    for i in range(10):
        assert answered_by(api, f"/down/{i}") == "thrift"
    assert grpc_echo(rpc, b"d") == b"thrift:d"


@pytest.mark.postgres
@pytest.mark.parametrize("url, mode", [
    ("postgresql://127.0.0.1:5432", "static"),
    ("postgresql://localhost", "logical_dns"),  # the seed's shape: a DNS name, default port
])
def test_tcp_listener_passes_a_postgresql_session_through(stack, url, mode):
    asyncpg = pytest.importorskip("asyncpg")
    if not port_open(5432):
        pytest.skip("PostgreSQL is not running on 127.0.0.1:5432 (this test needs it)")
    db = free_port()
    stack.server.write_shard("rds", {
        "proxy_config": {"public_listeners": {"secure_postgres": {"mode": "tcp", "path": str(db)}}},
        "container_dals": {},
        "network_dals": {"rds": {
            "listeners": {"secure_postgres": url}, "mode": mode,
        }},
    })
    stack.envoy("rds")
    wait_until(lambda: port_open(db), 10, what="envoy tcp listener")

    import asyncio

    async def query() -> tuple[int, str]:
        conn = await asyncpg.connect(host="127.0.0.1", port=db, user="postgres", database="test", timeout=5)
        try:
            return await conn.fetchval("select 40 + 2"), await conn.fetchval("select current_database()")
        finally:
            await conn.close()

    assert asyncio.run(query()) == (42, "test")


def test_editing_the_shard_file_reroutes_without_restart_or_broken_connection(stack):
    api = free_port()
    ports = {"a": free_port(), "b": free_port()}

    def shard(percent: int) -> dict:
        return {
            "proxy_config": {"public_listeners": {"api": {"mode": "http", "path": api}}},
            "container_dals": {n: {"container_listeners": {"api": p}} for n, p in ports.items()},
            "wiring": {"a": {"mode": "split", "target": "b", "percent": percent}},
        }

    stack.server.write_shard("edit", shard(0))
    for name, port in ports.items():
        stack.dal(name, {"api": port})
    stack.server.report("edit", "node-1", [healthy(n, "api", p) for n, p in ports.items()])
    envoy = stack.envoy("edit")
    wait_until(lambda: answered_by(api) == "a", 10, what="route to a")
    pid = envoy.pid
    listeners_before = envoy.stat("listener_manager.lds.update_success")

    conn = http.client.HTTPConnection("127.0.0.1", api, timeout=5)
    assert http_get(api, "/open", conn)[1]["dal"] == "a"
    stack.server.write_shard("edit", shard(100))
    # The same keep-alive connection sees the new routing: nothing was torn down.
    wait_until(lambda: http_get(api, "/same-conn", conn)[1]["dal"] == "b", 10, what="route to b on the open connection")
    conn.close()

    assert envoy.pid == pid and envoy.alive()
    assert envoy.stat("listener_manager.lds.update_success") == listeners_before, "LDS must not be re-sent for a route edit"
    assert envoy.stat("listener_manager.listener_modified") == 0


def test_rejected_config_is_a_nack_and_traffic_keeps_flowing(stack):
    api, taken, dal_port = free_port(), free_port(), free_port()
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", taken))
    blocker.listen()
    try:
        base = {
            "proxy_config": {"public_listeners": {"api": {"mode": "http", "path": api}}},
            "container_dals": {"kv": {"container_listeners": {"api": dal_port}}},
        }
        stack.server.write_shard("nack", base)
        stack.dal("kv", {"api": dal_port})
        stack.server.report("nack", "node-1", [healthy("kv", "api", dal_port)])
        stack.envoy("nack")
        wait_until(lambda: answered_by(api) == "kv", 10, what="first config served")

        # A second public listener on a port another process holds: Envoy cannot bind it
        # and rejects the listener update.
        base["proxy_config"]["public_listeners"]["extra"] = {"mode": "http", "path": taken}
        base["container_dals"]["kv"]["container_listeners"]["extra"] = dal_port
        stack.server.write_shard("nack", base)

        def nack_message() -> str | None:
            text = json.dumps(stack.server.get("/v1/nodes"))
            return text if "in use" in text or "cannot bind" in text else None

        recorded = wait_until(nack_message, 10, what="the NACK recorded in node status")
        assert str(taken) in recorded
        for i in range(10):
            assert answered_by(api, f"/after-nack/{i}") == "kv"
    finally:
        blocker.close()


def test_registered_hosts_reach_client_side_proxies_over_eds(stack):
    api, dal_port, client_port = free_port(), free_port(), free_port()
    stack.server.write_shard("kv", {
        "proxy_config": {"public_listeners": {"api": {"mode": "http", "path": api}}},
        "container_dals": {"kv": {"container_listeners": {"api": dal_port}}},
        "registrations": [{"address": "kv.dgw,kv.alias"}],
    })
    stack.dal("kv", {"api": dal_port})
    stack.envoy("kv")
    client = stack.envoy("", "app-1", client=("kv.dgw/api", client_port))

    # Not registered yet: the client proxy listens, but has nowhere to send the request.
    stack.server.report("kv", "node-1", [healthy("kv", "api", dal_port)])
    wait_until(lambda: port_open(client_port), 10, what="the client proxy listening")
    assert answered_by(client_port) is None

    stack.server.post("/v1/reports", {
        "shard": "kv", "node_id": "node-1", "host_address": "127.0.0.1",
        "registrations": ["kv.dgw", "kv.alias"], "endpoints": [healthy("kv", "api", dal_port)],
    })
    assert stack.server.get("/v1/discovery/kv.dgw")["instances"][0]["ports"] == {"api": api}
    wait_until(lambda: answered_by(client_port) == "kv", 10, what="client proxy → gateway → DAL")

    # Deregistered (the host turned unhealthy): the client proxy stops sending.
    stack.server.report("kv", "node-1", [])
    wait_until(lambda: client.stat("cluster.gateway.membership_total") == 0, 10, what="host removed from the client's EDS")
