"""Gateway IR → Envoy resources: the second, pure stage of translation.

Messages are built field by field (never parsed from JSON or YAML) because a control
plane translates thousands of shards. Parts that are the same in every resource are
built once at import and copied in.
"""

from __future__ import annotations

from collections.abc import Iterable

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import address_pb2, base_pb2, config_source_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from envoy.type.v3 import percent_pb2
from google.protobuf import any_pb2, duration_pb2, wrappers_pb2
from google.protobuf.message import Message

from common.names import LISTENER_SOCKETS
from xds_server.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE, Resources

from . import ir, security
from .endpoints import endpoints_for, lb_endpoint, socket_address
from .packing import packed

HTTP_CONNECTION_MANAGER = "envoy.filters.network.http_connection_manager"
TCP_PROXY = "envoy.filters.network.tcp_proxy"
ROUTER = "envoy.filters.http.router"
HTTP_PROTOCOL_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


# Routes and EDS assignments come over the same ADS stream as everything else, so
# Envoy gets them in the order the snapshot cache chooses.
_ADS = config_source_pb2.ConfigSource(
    ads=config_source_pb2.AggregatedConfigSource(),
    resource_api_version=config_source_pb2.ApiVersion.V3,
)
_ROUTER = hcm_pb2.HttpFilter(name=ROUTER, typed_config=packed(router_pb2.Router()))
# gRPC needs HTTP/2 to the DAL; plain http DALs are served HTTP/1.1, which every
# HTTP server speaks, whatever the client used to reach Envoy.
_UPSTREAM_HTTP: dict[ir.Protocol, any_pb2.Any] = {
    "grpc": packed(http_protocol_options_pb2.HttpProtocolOptions(
        explicit_http_config=http_protocol_options_pb2.HttpProtocolOptions.ExplicitHttpConfig(
            http2_protocol_options={},
        ),
    )),
    "http": packed(http_protocol_options_pb2.HttpProtocolOptions(
        explicit_http_config=http_protocol_options_pb2.HttpProtocolOptions.ExplicitHttpConfig(
            http_protocol_options={},
        ),
    )),
}
_DISCOVERY_TYPE: dict[ir.Discovery, int] = {
    "reported": cluster_pb2.Cluster.EDS,
    "logical_dns": cluster_pb2.Cluster.LOGICAL_DNS,
    "strict_dns": cluster_pb2.Cluster.STRICT_DNS,
    "static": cluster_pb2.Cluster.STATIC,
}
# ir.FULL_SHARE is ten thousand: shares are basis points.
_SHARE_DENOMINATOR = percent_pb2.FractionalPercent.TEN_THOUSAND


def to_resources(gateway: ir.GatewayIR) -> Resources:
    """Clusters, an empty assignment per EDS cluster, listeners and routes, by name."""
    return Resources(by_type={
        CLUSTER: _by_name((u.name, _cluster(u)) for u in gateway.upstreams),
        ENDPOINT: endpoints_for(gateway, ()),
        LISTENER: _by_name((lst.name, _listener(lst)) for lst in gateway.listeners),
        ROUTE: _by_name(
            (lst.route, _route_configuration(lst)) for lst in gateway.listeners if lst.route
        ),
    })


def _by_name(named: Iterable[tuple[str, Message]]) -> dict[str, Message]:
    return dict(sorted(named, key=lambda pair: pair[0]))


def _duration(seconds: float) -> duration_pb2.Duration:
    duration = duration_pb2.Duration()
    duration.FromNanoseconds(round(seconds * 1e9))
    return duration


# --- clusters --------------------------------------------------------------------


def _cluster(upstream: ir.Upstream) -> cluster_pb2.Cluster:
    cluster = cluster_pb2.Cluster(
        name=upstream.name,
        type=_DISCOVERY_TYPE[upstream.discovery],
        connect_timeout=_duration(upstream.connect_timeout_s),
    )
    if upstream.target is None:
        cluster.eds_cluster_config.eds_config.CopyFrom(_ADS)
        # A DAL cluster has one host per gateway (its own DAL). Envoy's default panic
        # mode would route to that host while it is reported starting or unhealthy;
        # a client must get a fast 503 instead.
        cluster.common_lb_config.healthy_panic_threshold.value = 0.0
    else:
        if upstream.discovery != "static":
            # Envoy's AUTO tries IPv6 first, which hosts without a v6 route cannot reach.
            cluster.dns_lookup_family = cluster_pb2.Cluster.V4_PREFERRED
        cluster.load_assignment.cluster_name = upstream.name
        cluster.load_assignment.endpoints.add().lb_endpoints.append(
            lb_endpoint(upstream.target.host, upstream.target.port)
        )
    if upstream.protocol in _UPSTREAM_HTTP:
        cluster.typed_extension_protocol_options[HTTP_PROTOCOL_OPTIONS].CopyFrom(
            _UPSTREAM_HTTP[upstream.protocol]
        )
    return cluster


# --- listeners -------------------------------------------------------------------


def _listener(lst: ir.Listener) -> listener_pb2.Listener:
    chain = listener_components_pb2.FilterChain()
    if lst.route:
        chain.filters.append(listener_components_pb2.Filter(
            name=HTTP_CONNECTION_MANAGER, typed_config=packed(_http_connection_manager(lst)),
        ))
    else:
        if lst.authz is not None:
            chain.filters.append(listener_components_pb2.Filter(
                name=security.NETWORK_RBAC,
                typed_config=packed(security.network_rbac_filter(lst, lst.authz)),
            ))
        chain.filters.append(listener_components_pb2.Filter(
            name=TCP_PROXY, typed_config=packed(_tcp_proxy(lst)),
        ))
    if lst.tls is not None:
        chain.transport_socket.CopyFrom(security.transport_socket(lst.tls))
    return listener_pb2.Listener(
        name=lst.name, address=_bind_address(lst.bind), filter_chains=[chain],
        access_log=[security.denied_connection_log(lst)] if lst.authz is not None and not lst.route else [],
    )


def _bind_address(bind: ir.HostPort | ir.UnixSocket) -> address_pb2.Address:
    if isinstance(bind, ir.UnixSocket):
        # Relative to Envoy's working directory, the sidecar's own state dir; any local
        # user may connect, as to a loopback port (tls_creds and authz decide who is served).
        return address_pb2.Address(pipe=address_pb2.Pipe(path=f"{LISTENER_SOCKETS}/{bind.name}", mode=0o666))
    return socket_address(bind.host, bind.port)


def _http_connection_manager(lst: ir.Listener) -> hcm_pb2.HttpConnectionManager:
    return hcm_pb2.HttpConnectionManager(
        # AUTO accepts HTTP/1.1 and HTTP/2 (with prior knowledge, as gRPC clients use).
        codec_type=hcm_pb2.HttpConnectionManager.AUTO,
        stat_prefix=lst.listener,
        rds=hcm_pb2.Rds(config_source=_ADS, route_config_name=lst.route),
        http_filters=[security.http_rbac_filter(), _ROUTER] if lst.authz else [_ROUTER],
        access_log=[security.denied_access_log(lst)] if lst.authz else [],
    )


def _tcp_proxy(lst: ir.Listener) -> tcp_proxy_pb2.TcpProxy:
    proxy = tcp_proxy_pb2.TcpProxy(stat_prefix=lst.listener)
    if len(lst.backends) == 1:
        proxy.cluster = lst.backends[0].upstream
    else:
        proxy.weighted_clusters.clusters.extend(
            tcp_proxy_pb2.TcpProxy.WeightedCluster.ClusterWeight(name=b.upstream, weight=b.share)
            for b in lst.backends
        )
    return proxy


# --- routes ----------------------------------------------------------------------


def _route_configuration(lst: ir.Listener) -> route_pb2.RouteConfiguration:
    virtual_host = route_components_pb2.VirtualHost(
        name=lst.listener,
        domains=["*"],
        routes=[route_components_pb2.Route(
            match=route_components_pb2.RouteMatch(prefix="/"),
            route=_route_action(lst),
        )],
    )
    if lst.authz is not None:
        for name, config in security.route_rbac(lst, lst.authz).items():
            virtual_host.typed_per_filter_config[name].CopyFrom(config)
    return route_pb2.RouteConfiguration(name=lst.route, virtual_hosts=[virtual_host])


def _route_action(lst: ir.Listener) -> route_components_pb2.RouteAction:
    action = route_components_pb2.RouteAction()
    if len(lst.backends) == 1:
        action.cluster = lst.backends[0].upstream
    else:
        action.weighted_clusters.clusters.extend(
            route_components_pb2.WeightedCluster.ClusterWeight(
                name=b.upstream, weight=wrappers_pb2.UInt32Value(value=b.share)
            )
            for b in lst.backends
        )
    if lst.protocol == "grpc":
        # A zero timeout turns the per-request limit off: gRPC streams may last for hours.
        action.timeout.SetInParent()
    action.request_mirror_policies.extend(_mirror_policy(m) for m in lst.mirrors)
    return action


def _mirror_policy(mirror: ir.Mirror) -> route_components_pb2.RouteAction.RequestMirrorPolicy:
    policy = route_components_pb2.RouteAction.RequestMirrorPolicy(cluster=mirror.upstream)
    if mirror.runtime_key is not None:
        policy.runtime_fraction.CopyFrom(base_pb2.RuntimeFractionalPercent(
            default_value=percent_pb2.FractionalPercent(
                numerator=mirror.share, denominator=_SHARE_DENOMINATOR
            ),
            runtime_key=mirror.runtime_key,
        ))
    return policy
