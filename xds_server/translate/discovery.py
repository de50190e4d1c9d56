"""Registrations → EDS for client-side proxies: who serves a discovery name.

A healthy gateway host registers under its shard's ``registrations`` addresses. A
client-side Envoy finds the hosts behind ``ADDRESS`` for one listener by subscribing
to the EDS resource ``ADDRESS/LISTENER`` (its node cluster is ``DISCOVERY_SHARD``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from envoy.config.core.v3.health_check_pb2 import HealthStatus
from envoy.config.endpoint.v3 import endpoint_pb2

from .endpoints import lb_endpoint

# Node cluster of client-side proxies; it cannot collide with a shard file's name.
DISCOVERY_SHARD = "_discovery"


@dataclass(frozen=True)
class RegisteredHost:
    """One gateway host under one discovery address, with its public TCP ports."""

    shard: str
    node_id: str
    address: str
    ports: Mapping[str, int]


def resource_name(address: str, listener: str) -> str:
    return f"{address}/{listener}"


def discovery_assignments(
    registered: Mapping[str, Iterable[RegisteredHost]],
) -> dict[str, endpoint_pb2.ClusterLoadAssignment]:
    """One assignment per (address, listener) the registered hosts serve."""
    assignments: dict[str, endpoint_pb2.ClusterLoadAssignment] = {}
    for address in sorted(registered):
        hosts = sorted(registered[address], key=lambda h: (h.shard, h.node_id))
        for host in hosts:
            for listener, port in sorted(host.ports.items()):
                name = resource_name(address, listener)
                cla = assignments.get(name)
                if cla is None:
                    cla = assignments[name] = endpoint_pb2.ClusterLoadAssignment(cluster_name=name)
                    cla.endpoints.add()
                cla.endpoints[0].lb_endpoints.append(lb_endpoint(host.address, port, HealthStatus.HEALTHY))
    return assignments
