"""Which requests are low priority, decided by the caller's identity (real Envoy, mTLS):
a consumer with ``priority: low`` always is; ``x-dgw-priority: low`` counts only from a
consumer trusted with it. Envoy's per-route counters tell which route took each request."""

from __future__ import annotations

import http.client
from collections.abc import Iterator

import pytest

from testkit.ports import free_port, port_open
from testkit.wait import wait_until
from tests.support.procs import Child, sample_dal

from .datapath import SecureStack, healthy

pytestmark = [pytest.mark.envoy, pytest.mark.slow]

SHARD, ADDRESS = "prio", "prio.dgw"
API, BATCH, UI = "prod-api", "prod-batch", "prod-ui"


def prio_shard(http_port: int, dal_port: int) -> dict:
    return {
        "proxy_config": {"public_listeners": {
            "secure_http": {"mode": "http", "path": http_port, "tls_creds": "metatron", "authz": "gandalf"}}},
        "container_dals": {"app": {"container_listeners": {"secure_http": dal_port}}},
        "registrations": [{"address": ADDRESS}],
        "deploy_desires": {"consumers": [
            {"type": "account-app", "value": API, "group": "read-write"},
            {"type": "account-app", "value": BATCH, "group": "read-write", "priority": "low"},
            {"type": "account-app", "value": UI, "group": "read-write", "may_set_priority": True},
        ]},
    }  # fmt: skip


class Gateway:
    def __init__(self, stack: SecureStack, http_port: int) -> None:
        self.stack, self.http_port = stack, http_port
        self.envoy = stack.gateway(SHARD)

    def get(self, who: str, headers: dict[str, str] | None = None) -> int:
        conn = http.client.HTTPSConnection("127.0.0.1", self.http_port, timeout=5,
                                           context=self.stack.ca.client_context(who))  # fmt: skip
        try:
            conn.request("GET", "/item/1", headers=headers or {})
            response = conn.getresponse()
            response.read()
            return response.status
        finally:
            conn.close()

    def routed(self, route: str) -> int:
        name = f"vhost.secure_http.route.{route}.upstream_rq_total"
        return self.envoy.stat(name)


@pytest.fixture
def gateway(tmp_path) -> Iterator[Gateway]:
    stack = SecureStack(tmp_path)
    dal: Child | None = None
    try:
        http_port, dal_port = free_port(), free_port()
        stack.server.write_shard(SHARD, prio_shard(http_port, dal_port))
        dal = sample_dal("app", {"secure_http": dal_port}, tmp_path / "dal.log")
        stack.register(SHARD, "gw-1", ADDRESS, [healthy("app", "secure_http", dal_port)])
        gw = Gateway(stack, http_port)
        wait_until(lambda: port_open(http_port), 10, what="the secured listener")
        yield gw
    finally:
        stack.close()
        if dal is not None:
            dal.stop()


def test_low_priority_by_consumer_and_by_trusted_header_only(gateway: Gateway):
    wait_until(lambda: gateway.get(API) == 200, 15, what="a first answer")
    cases = [
        (BATCH, {}, "reads_low"),  # a low-priority consumer, always
        (BATCH, {"x-dgw-priority": "high"}, "reads_low"),  # ... whatever it says
        (UI, {"x-dgw-priority": "low"}, "reads_low_asked"),  # trusted with the header
        (UI, {}, "reads"),
        (API, {"x-dgw-priority": "low"}, "reads"),  # not trusted: the header is ignored
    ]
    for who, headers, route in cases:
        before = gateway.routed(route)
        assert gateway.get(who, headers) == 200
        wait_until(lambda r=route, b=before: gateway.routed(r) == b + 1, 10,
                   what=f"{who} {headers} routed by {route}")  # fmt: skip
