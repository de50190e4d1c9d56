"""Resilience policies with the real Envoy and the sample DAL: an edit reaches the
running Envoy over RDS and CDS (no restart, no drained listener), and a listener's
rate limit sheds at once with the documented answers (HTTP 503 + retry-after, gRPC
RESOURCE_EXHAUSTED)."""

from __future__ import annotations

import http.client
import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import pytest

from testkit.ports import free_port
from testkit.wait import wait_until

from .conftest import http_get

ECHO = "/dgw.sample.v1.Echo/Echo"

pytestmark = pytest.mark.envoy


def _healthy(port: int, listener: str = "api") -> dict[str, Any]:
    return {"dal": "kv", "listener": listener, "address": "127.0.0.1", "port": port, "health": "HEALTHY"}


def _effective(envoy: Any) -> tuple[str | None, int | None]:
    """The read route's timeout and the DAL cluster's HIGH max_requests, as Envoy holds them."""
    dump = json.loads(envoy.admin_text("/config_dump"))
    timeout = max_requests = None
    for config in dump["configs"]:
        for route in config.get("dynamic_route_configs", []):
            for r in route["route_config"]["virtual_hosts"][0]["routes"]:
                if r["name"] == "reads":
                    timeout = r["route"]["timeout"]
        for cluster in config.get("dynamic_active_clusters", []):
            if cluster["cluster"]["name"] == "dal.kv.api":
                for t in cluster["cluster"]["circuit_breakers"]["thresholds"]:
                    if t.get("priority") == "HIGH":
                        max_requests = t["max_requests"]
    return timeout, max_requests


def test_an_edited_policy_reaches_the_running_envoy_without_draining(stack):
    api, dal_port = free_port(), free_port()

    def shard(timeout: str, max_requests: int) -> dict[str, Any]:
        return {
            "proxy_config": {"public_listeners": {"api": {"mode": "http", "path": api}}},
            "container_dals": {"kv": {"container_listeners": {"api": dal_port}}},
            "resilience": {"timeout": timeout, "retries": {"per_try_timeout": "200ms"},
                           "circuit_breakers": {"max_requests": max_requests}},
        }

    stack.server.write_shard("res", shard("3s", 100))
    stack.dal("kv", {"api": dal_port})
    stack.server.report("res", "node-1", [_healthy(dal_port)])
    envoy = stack.envoy("res")
    conn = http.client.HTTPConnection("127.0.0.1", api, timeout=5)
    wait_until(lambda: http_get(api, "/first", conn)[0] == 200, 10, what="a first answer through Envoy")
    assert _effective(envoy) == ("3s", 100)
    pid = envoy.pid

    stack.server.write_shard("res", shard("1.500s", 7))
    wait_until(lambda: _effective(envoy) == ("1.500s", 7), 10, what="the edited policy in Envoy")
    # The open keep-alive connection still works: nothing was restarted or drained.
    assert http_get(api, "/after-edit", conn)[0] == 200
    conn.close()
    assert envoy.pid == pid and envoy.alive()
    assert envoy.stat("listener_manager.listener_modified") == 0


def test_a_rate_limit_sheds_at_once_with_503_retry_after_or_resource_exhausted(stack):
    api, rpc, dal_api, dal_rpc = free_port(), free_port(), free_port(), free_port()
    stack.server.write_shard("shed", {
        "proxy_config": {"public_listeners": {"api": {"mode": "http", "path": api},
                                              "grpc": {"mode": "grpc", "path": rpc}}},
        "container_dals": {"kv": {"container_listeners": {"api": dal_api, "grpc": dal_rpc}}},
        # One request a second, none stored up: the second of two quick requests is shed.
        "resilience": {"load_shedding": {"rate_limit": {"requests_per_second": 1, "burst": 1}}},
    })  # fmt: skip
    stack.dal("kv", {"api": dal_api, "grpc": dal_rpc})
    stack.server.report("shed", "node-1", [_healthy(dal_api), _healthy(dal_rpc, "grpc")])
    envoy = stack.envoy("shed")

    def shed_http() -> http.client.HTTPResponse | None:
        conn = http.client.HTTPConnection("127.0.0.1", api, timeout=5)
        try:
            for _ in range(3):
                conn.request("GET", "/v1/get")
                response = conn.getresponse()
                response.read()
                if response.status == 503:
                    return response
        except OSError:
            return None
        finally:
            conn.close()
        return None

    shed = wait_until(shed_http, 15, what="an HTTP request shed by the rate limit")
    assert shed.getheader("retry-after") == "1"

    def shed_grpc() -> grpc.RpcError | None:
        with grpc.insecure_channel(f"127.0.0.1:{rpc}") as channel:
            for _ in range(3):
                try:
                    channel.unary_unary(ECHO)(b"x", timeout=5)
                except grpc.RpcError as e:
                    if e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                        return e
        return None

    wait_until(shed_grpc, 15, what="a gRPC call shed with RESOURCE_EXHAUSTED")
    assert envoy.stat("grpc.http_local_rate_limit.rate_limited") >= 1
    assert envoy.stat("api.http_local_rate_limit.rate_limited") >= 1


class _FailingDal:
    """A gRPC endpoint that answers every call INTERNAL (an HTTP 200 with grpc-status 13)."""

    def __init__(self) -> None:
        self.calls = 0
        self.port = free_port()
        handler = grpc.method_handlers_generic_handler("dgw.sample.v1.Echo", {
            "Echo": grpc.unary_unary_rpc_method_handler(self._fail),
        })  # fmt: skip
        self.server = grpc.server(ThreadPoolExecutor(max_workers=2), handlers=[handler])
        self.server.add_insecure_port(f"127.0.0.1:{self.port}")
        self.server.start()

    def _fail(self, _request: bytes, context: grpc.ServicerContext) -> bytes:
        self.calls += 1
        context.abort(grpc.StatusCode.INTERNAL, "broken on purpose")
        raise AssertionError("abort raises")

    def stop(self) -> None:
        self.server.stop(None)


def test_an_endpoint_answering_grpc_errors_is_ejected_and_its_peer_takes_the_traffic(stack):
    rpc, good = free_port(), free_port()
    failing = _FailingDal()
    try:
        stack.server.write_shard("eject", {
            "proxy_config": {"public_listeners": {"grpc": {"mode": "grpc", "path": rpc}}},
            "container_dals": {"kv": {"container_listeners": {"grpc": good}}},
            # Not retried (INTERNAL never is), so every failure reaches the caller until
            # the ejection; a gRPC error counts as its HTTP status (INTERNAL is 500).
            "resilience": {"outlier_detection": {
                "consecutive_5xx": 3, "interval": "100ms", "base_ejection_time": "60s", "max_ejection_percent": 50}},
        })  # fmt: skip
        stack.dal("kv", {"grpc": good})
        stack.server.report("eject", "node-1", [_healthy(good, "grpc"), _healthy(failing.port, "grpc")])
        envoy = stack.envoy("eject")

        def ejected() -> bool:
            with grpc.insecure_channel(f"127.0.0.1:{rpc}") as channel:
                for _ in range(4):
                    try:
                        channel.unary_unary(ECHO)(b"x", timeout=5)
                    except grpc.RpcError as e:
                        assert e.code() in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNAVAILABLE), e
            return envoy.stat("cluster.dal.kv.grpc.outlier_detection.ejections_enforced_consecutive_5xx") >= 1

        wait_until(ejected, 20, what="the failing endpoint ejected")
        assert failing.calls >= 3
        calls = failing.calls
        with grpc.insecure_channel(f"127.0.0.1:{rpc}") as channel:
            for i in range(10):
                assert channel.unary_unary(ECHO)(f"{i}".encode(), timeout=5) == f"kv:{i}".encode()
        assert failing.calls == calls, "an ejected endpoint got traffic"
    finally:
        failing.stop()
