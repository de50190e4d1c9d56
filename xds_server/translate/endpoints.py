"""Sidecar reports → EDS: where this host's DALs listen and whether to route to them.

EDS is per node: each Envoy fronts its own host's DALs, so the reports given here
are one node's. Every EDS cluster gets an assignment, empty when nothing is reported:
Envoy keeps an EDS cluster warming until its assignment arrives.
"""

from __future__ import annotations

from collections.abc import Iterable

from envoy.config.core.v3 import address_pb2
from envoy.config.core.v3.health_check_pb2 import HealthStatus
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2

from dgw_api.health import Health
from dgw_api.v1 import gateway_pb2

from .ir import GatewayIR


def envoy_health(health: Health) -> int:
    """Our health in Envoy's words: a starting DAL is not ready for traffic even
    though it is running."""
    match health:
        case Health.HEALTHY | Health.NONE:
            return int(HealthStatus.HEALTHY)
        case Health.UNKNOWN:
            return int(HealthStatus.UNKNOWN)
        case Health.STARTING | Health.UNHEALTHY:
            return int(HealthStatus.UNHEALTHY)
        case Health.DRAINING:
            return int(HealthStatus.DRAINING)


def socket_address(host: str, port: int) -> address_pb2.Address:
    return address_pb2.Address(
        socket_address=address_pb2.SocketAddress(address=host, port_value=port)
    )


def lb_endpoint(
    host: str, port: int, health: int = HealthStatus.UNKNOWN
) -> endpoint_components_pb2.LbEndpoint:
    return endpoint_components_pb2.LbEndpoint(
        endpoint=endpoint_components_pb2.Endpoint(address=socket_address(host, port)),
        health_status=health,
    )


def endpoints_for(
    ir: GatewayIR, reports: Iterable[gateway_pb2.Endpoint]
) -> dict[str, endpoint_pb2.ClusterLoadAssignment]:
    """One assignment per reported upstream of ``ir``, by cluster name.

    Reports for a DAL or listener the IR does not have are ignored: they come from a
    sidecar still running the previous config.
    """
    by_dal_listener: dict[tuple[str, str], list[gateway_pb2.Endpoint]] = {}
    for report in reports:
        by_dal_listener.setdefault((report.dal, report.listener), []).append(report)
    assignments: dict[str, endpoint_pb2.ClusterLoadAssignment] = {}
    for upstream in ir.upstreams:
        if upstream.discovery != "reported":
            continue
        assignment = endpoint_pb2.ClusterLoadAssignment(cluster_name=upstream.name)
        found = by_dal_listener.get((upstream.dal, upstream.listener), [])
        if found:
            assignment.endpoints.add().lb_endpoints.extend(
                lb_endpoint(r.address, r.port, envoy_health(Health.from_pb(r.health)))
                for r in sorted(found, key=lambda r: (r.address, r.port))
            )
        assignments[upstream.name] = assignment
    return assignments
