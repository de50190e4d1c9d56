"""Small, valid Envoy resources for the ADS and cache tests."""

from __future__ import annotations

from envoy.config.cluster.v3.cluster_pb2 import Cluster
from envoy.config.core.v3 import address_pb2, config_source_pb2
from envoy.config.endpoint.v3.endpoint_pb2 import ClusterLoadAssignment
from envoy.config.listener.v3 import listener_components_pb2 as lc
from envoy.config.listener.v3.listener_pb2 import Listener
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.config.route.v3.route_pb2 import RouteConfiguration
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.transport_sockets.tls.v3.secret_pb2 import Secret

from xds_server.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET, Resources

_ADS = config_source_pb2.ConfigSource(ads=config_source_pb2.AggregatedConfigSource())


def cluster(name: str, timeout_ms: int = 1000) -> Cluster:
    c = Cluster(name=name, type=Cluster.EDS)
    c.eds_cluster_config.eds_config.CopyFrom(_ADS)
    c.eds_cluster_config.eds_config.resource_api_version = config_source_pb2.V3
    c.connect_timeout.FromMilliseconds(timeout_ms)
    return c


def cla(name: str, *ports: int) -> ClusterLoadAssignment:
    assignment = ClusterLoadAssignment(cluster_name=name)
    group = assignment.endpoints.add()
    for port in ports:
        lb = group.lb_endpoints.add()
        lb.endpoint.address.socket_address.CopyFrom(
            address_pb2.SocketAddress(address="127.0.0.1", port_value=port)
        )
    return assignment


def listener(name: str, port: int, route: str, address: str = "127.0.0.1") -> Listener:
    hcm = hcm_pb2.HttpConnectionManager(stat_prefix=name)
    hcm.rds.route_config_name = route
    hcm.rds.config_source.CopyFrom(_ADS)
    hcm.rds.config_source.resource_api_version = config_source_pb2.V3
    router = hcm.http_filters.add(name="envoy.filters.http.router")
    router.typed_config.Pack(router_pb2.Router())
    chain = lc.FilterChain()
    f = chain.filters.add(name="envoy.filters.network.http_connection_manager")
    f.typed_config.Pack(hcm)
    lst = Listener(name=name, filter_chains=[chain])
    lst.address.socket_address.CopyFrom(address_pb2.SocketAddress(address=address, port_value=port))
    return lst


def route(name: str, cluster_name: str) -> RouteConfiguration:
    vhost = rc.VirtualHost(name=name, domains=["*"])
    r = vhost.routes.add()
    r.match.prefix = "/"
    r.route.cluster = cluster_name
    return RouteConfiguration(name=name, virtual_hosts=[vhost])


def secret(name: str, value: str = "s3cret") -> Secret:
    s = Secret(name=name)
    s.generic_secret.secret.inline_string = value
    return s


def resources(
    clusters: dict[str, int] | None = None,
    endpoints: dict[str, tuple[int, ...]] | None = None,
    listeners: dict[str, tuple[int, str]] | None = None,
    routes: dict[str, str] | None = None,
    secrets: dict[str, str] | None = None,
) -> Resources:
    """Resources from compact specs: clusters name→timeout_ms, endpoints name→ports,
    listeners name→(port, route), routes name→cluster, secrets name→value."""
    return Resources(
        {
            CLUSTER: {n: cluster(n, t) for n, t in (clusters or {}).items()},
            ENDPOINT: {n: cla(n, *p) for n, p in (endpoints or {}).items()},
            LISTENER: {n: listener(n, p, r) for n, (p, r) in (listeners or {}).items()},
            ROUTE: {n: route(n, c) for n, c in (routes or {}).items()},
            SECRET: {n: secret(n, v) for n, v in (secrets or {}).items()},
        }
    )


def basic(**changes: dict) -> Resources:
    """Two clusters with endpoints, one listener and its route, one secret."""
    spec: dict[str, dict] = {
        "clusters": {"c1": 1000, "c2": 1000},
        "endpoints": {"c1": (9001,), "c2": (9002,)},
        "listeners": {"l1": (10000, "r1")},
        "routes": {"r1": "c1"},
        "secrets": {"s1": "one"},
    }
    spec.update(changes)
    return resources(**spec)
