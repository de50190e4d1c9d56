"""Envoy resource types, their xDS type URLs and the one order they are pushed in.

The translator produces ``Resources``; the snapshot cache serializes them; the ADS
streams send them. This module is the vocabulary the three share.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2
from google.protobuf.message import Message

CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
ENDPOINT = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"
ROUTE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
SECRET = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"

# Envoy's xds_protocol "eventual consistency considerations": clusters before the
# endpoints they use, listeners before routes, secrets last; so Envoy never points at
# something it has not got.
PUSH_ORDER: tuple[str, ...] = (CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET)

MESSAGE_TYPES: dict[str, type[Message]] = {
    CLUSTER: cluster_pb2.Cluster,
    ENDPOINT: endpoint_pb2.ClusterLoadAssignment,
    LISTENER: listener_pb2.Listener,
    ROUTE: route_pb2.RouteConfiguration,
    SECRET: secret_pb2.Secret,
}

SHORT_NAMES: dict[str, str] = {
    CLUSTER: "clusters",
    ENDPOINT: "endpoints",
    LISTENER: "listeners",
    ROUTE: "routes",
    SECRET: "secrets",
}


@dataclass(frozen=True)
class Resources:
    """Envoy resources by type URL, each a mapping of resource name → message."""

    by_type: dict[str, dict[str, Message]] = field(default_factory=dict)

    def of(self, type_url: str) -> dict[str, Message]:
        return self.by_type.get(type_url, {})
