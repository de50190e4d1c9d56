"""endpoints_for: one node's sidecar reports → an EDS assignment per container DAL listener."""

from __future__ import annotations

import pytest
from envoy.config.core.v3.health_check_pb2 import HealthStatus

from dgw_api.v1 import gateway_pb2
from xds_server.config import load_shard_text
from xds_server.resources import ENDPOINT
from xds_server.translate import GatewayIR, build_ir, endpoints_for, to_resources

CONFIG = """
proxy_config:
  public_listeners:
    api: {mode: grpc, path: 18980}
container_dals:
  kv:
    container_listeners: {api: 8980, admin: 8081}
network_dals:
  legacy:
    listeners: {api: "grpc://127.0.0.1:9090"}
wiring:
  kv: {mode: shadow, target: legacy}
"""


@pytest.fixture
def ir() -> GatewayIR:
    return build_ir(load_shard_text(CONFIG, "t.yaml", env={}))


def _report(port: int, health: int, dal: str = "kv", listener: str = "api") -> gateway_pb2.Endpoint:
    return gateway_pb2.Endpoint(dal=dal, listener=listener, address="127.0.0.1", port=port, health=health)


def test_every_reported_cluster_gets_an_assignment_and_network_ones_none(ir: GatewayIR) -> None:
    assignments = endpoints_for(ir, [])
    assert list(assignments) == ["dal.kv.admin", "dal.kv.api"]
    assert all(not a.endpoints for a in assignments.values())
    assert assignments == to_resources(ir).of(ENDPOINT)


@pytest.mark.parametrize(
    ("health", "envoy_health"),
    [
        (gateway_pb2.HEALTHY, HealthStatus.HEALTHY),
        (gateway_pb2.HEALTH_UNKNOWN, HealthStatus.UNKNOWN),
        (gateway_pb2.STARTING, HealthStatus.UNHEALTHY),
        (gateway_pb2.UNHEALTHY, HealthStatus.UNHEALTHY),
        (gateway_pb2.DRAINING, HealthStatus.DRAINING),
        (99, HealthStatus.UNHEALTHY),
    ],
)
def test_health_is_mapped_so_only_ready_dals_get_traffic(
    ir: GatewayIR, health: int, envoy_health: int
) -> None:
    (endpoint,) = endpoints_for(ir, [_report(32000, health)])["dal.kv.api"].endpoints[0].lb_endpoints
    assert endpoint.health_status == envoy_health
    assert endpoint.endpoint.address.socket_address.address == "127.0.0.1"
    assert endpoint.endpoint.address.socket_address.port_value == 32000


def test_reports_land_on_their_listener_sorted_and_unknown_ones_are_ignored(ir: GatewayIR) -> None:
    reports = [
        _report(32002, gateway_pb2.HEALTHY),
        _report(32001, gateway_pb2.STARTING),
        _report(32100, gateway_pb2.HEALTHY, listener="admin"),
        _report(32200, gateway_pb2.HEALTHY, dal="gone"),
        _report(32300, gateway_pb2.HEALTHY, dal="legacy"),
    ]
    assignments = endpoints_for(ir, reports)
    ports = {
        name: [e.endpoint.address.socket_address.port_value for g in a.endpoints for e in g.lb_endpoints]
        for name, a in assignments.items()
    }
    assert ports == {"dal.kv.admin": [32100], "dal.kv.api": [32001, 32002]}
    assert endpoints_for(ir, reversed(reports)) == assignments
