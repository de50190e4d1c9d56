"""Resilience policies change live with an edit, like wiring: the new route and
cluster settings reach the running Envoy over RDS and CDS, without a restart or a
drained listener (real Envoy, sample DAL)."""

from __future__ import annotations

import http.client
import json
from typing import Any

import pytest

from testkit.ports import free_port
from testkit.wait import wait_until

from .conftest import http_get

pytestmark = pytest.mark.envoy


def _healthy(port: int) -> dict[str, Any]:
    return {"dal": "kv", "listener": "api", "address": "127.0.0.1", "port": port, "health": "HEALTHY"}


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
