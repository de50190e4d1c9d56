"""Gateway IR → Envoy resources: the second, pure stage of translation.

Messages are built field by field (never parsed from JSON or YAML) because a control
plane translates thousands of shards. Parts that are the same in every resource are
built once at import and copied in.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from envoy.config.cluster.v3 import circuit_breaker_pb2, cluster_pb2, outlier_detection_pb2
from envoy.config.core.v3 import address_pb2, base_pb2, config_source_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.http.grpc_stats.v3 import config_pb2 as grpc_stats_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from envoy.extensions.retry.host.previous_hosts.v3 import previous_hosts_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from envoy.type.matcher.v3 import regex_pb2, string_pb2
from envoy.type.v3 import percent_pb2
from google.protobuf import any_pb2, wrappers_pb2
from google.protobuf.message import Message

from common.names import LISTENER_SOCKETS
from xds_server.config.resilience import OutlierDetection
from xds_server.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE, Resources

from . import ir, security, shedding
from .endpoints import endpoints_for, lb_endpoint, socket_address
from .packing import duration, packed

HTTP_CONNECTION_MANAGER = "envoy.filters.network.http_connection_manager"
TCP_PROXY = "envoy.filters.network.tcp_proxy"
ROUTER = "envoy.filters.http.router"
HTTP_PROTOCOL_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
XFCC = "x-forwarded-client-cert"


# Routes and EDS assignments come over the same ADS stream as everything else, so
# Envoy gets them in the order the snapshot cache chooses.
_ADS = config_source_pb2.ConfigSource(
    ads=config_source_pb2.AggregatedConfigSource(),
    resource_api_version=config_source_pb2.ApiVersion.V3,
)
_ROUTER = hcm_pb2.HttpFilter(name=ROUTER, typed_config=packed(router_pb2.Router()))
# gRPC answers are HTTP 200 whatever their status: this counts each cluster's calls by
# outcome (``cluster.X.grpc.success|failure|total``), which judgements read as errors.
_GRPC_STATS = hcm_pb2.HttpFilter(name="envoy.filters.http.grpc_stats", typed_config=packed(
    grpc_stats_pb2.FilterConfig(stats_for_all_methods=wrappers_pb2.BoolValue(value=False))))
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


# --- clusters --------------------------------------------------------------------


def _cluster(upstream: ir.Upstream) -> cluster_pb2.Cluster:
    cluster = cluster_pb2.Cluster(
        name=upstream.name,
        type=_DISCOVERY_TYPE[upstream.discovery],
        connect_timeout=duration(upstream.connect_timeout_s),
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
    if upstream.high is not None and upstream.low is not None:
        # Low-priority requests are routed at Envoy's DEFAULT priority, the others at
        # HIGH: each priority has breakers (and counters) of its own.
        cluster.circuit_breakers.thresholds.extend([
            _thresholds(base_pb2.RoutingPriority.DEFAULT, upstream.low),
            _thresholds(base_pb2.RoutingPriority.HIGH, upstream.high),
        ])
    if upstream.ejection is not None:
        cluster.outlier_detection.CopyFrom(_outlier_detection(upstream.ejection))
    return cluster


def _thresholds(priority: int, t: ir.Thresholds) -> circuit_breaker_pb2.CircuitBreakers.Thresholds:
    thresholds = circuit_breaker_pb2.CircuitBreakers.Thresholds(
        priority=priority,
        max_connections=wrappers_pb2.UInt32Value(value=t.max_connections),
        max_pending_requests=wrappers_pb2.UInt32Value(value=t.max_pending_requests),
        max_requests=wrappers_pb2.UInt32Value(value=t.max_requests),
        max_retries=wrappers_pb2.UInt32Value(value=t.max_retries),
        # Envoy reports how much of each breaker is left (remaining_* gauges): the
        # stats of shed requests read them.
        track_remaining=True,
    )
    if t.budget_percent is not None:
        thresholds.retry_budget.budget_percent.value = t.budget_percent
        thresholds.retry_budget.min_retry_concurrency.value = t.min_retry_concurrency
    return thresholds


def _outlier_detection(e: OutlierDetection) -> outlier_detection_pb2.OutlierDetection:
    # gRPC answers count too: the router maps grpc-status to an HTTP status for the
    # outlier detector (UNAVAILABLE is 503, INTERNAL and UNKNOWN 500).
    return outlier_detection_pb2.OutlierDetection(
        consecutive_5xx=wrappers_pb2.UInt32Value(value=e.consecutive_5xx),
        consecutive_gateway_failure=wrappers_pb2.UInt32Value(value=e.consecutive_gateway_failure),
        # Envoy enforces gateway failures 0 % of the time unless told otherwise.
        enforcing_consecutive_gateway_failure=wrappers_pb2.UInt32Value(value=100),
        # Success-rate ejection needs a request volume per host a DAL cluster rarely has.
        enforcing_success_rate=wrappers_pb2.UInt32Value(value=0),
        interval=duration(e.interval_s),
        base_ejection_time=duration(e.base_ejection_time_s),
        max_ejection_percent=wrappers_pb2.UInt32Value(value=round(e.max_ejection_percent)),
    )


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
    # Authorization first, so that a denied caller never spends the listener's budget.
    filters = [security.http_rbac_filter()] if lst.authz else []
    if lst.shedding is not None:
        filters.extend(shedding.http_filters(lst, lst.shedding))
    if lst.protocol == "grpc":
        filters.append(_GRPC_STATS)
    hcm = hcm_pb2.HttpConnectionManager(
        # AUTO accepts HTTP/1.1 and HTTP/2 (with prior knowledge, as gRPC clients use).
        codec_type=hcm_pb2.HttpConnectionManager.AUTO,
        stat_prefix=lst.listener,
        rds=hcm_pb2.Rds(config_source=_ADS, route_config_name=lst.route),
        http_filters=[*filters, _ROUTER],
        access_log=[security.denied_access_log(lst)] if lst.authz else [],
    )
    if lst.shedding is not None:
        hcm.local_reply_config.CopyFrom(shedding.local_reply_config())
    if lst.tls is not None and lst.low_priority is not None and _by_identity(lst.low_priority):
        # The caller's SPIFFE ID in x-forwarded-client-cert, set by Envoy alone (a
        # client's own header is dropped): routes choose the priority by it.
        hcm.forward_client_cert_details = hcm_pb2.HttpConnectionManager.SANITIZE_SET
        hcm.set_current_client_cert_details.uri = True
    return hcm


def _by_identity(low: ir.LowPriority) -> bool:
    return bool(low.callers or low.header_setters)


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
    virtual_host = route_components_pb2.VirtualHost(name=lst.listener, domains=["*"], routes=_routes(lst))
    if lst.authz is not None:
        for name, config in security.route_rbac(lst, lst.authz).items():
            virtual_host.typed_per_filter_config[name].CopyFrom(config)
    return route_pb2.RouteConfiguration(name=lst.route, virtual_hosts=[virtual_host])


def _routes(lst: ir.Listener) -> list[route_components_pb2.Route]:
    """One route per method class and priority: low-priority variants first (they
    match on more), each class's high-priority route after them."""
    classes = lst.route_classes or (ir.RouteClass("writes", None, 0.0, None),)
    routes = []
    for route_class in classes:
        for suffix, low_match in _low_priority_matches(lst.low_priority):
            routes.append(_route(lst, route_class, suffix, low_match, base_pb2.RoutingPriority.DEFAULT))
        routes.append(_route(lst, route_class, "", [], base_pb2.RoutingPriority.HIGH))
    return routes


def _route(
    lst: ir.Listener,
    route_class: ir.RouteClass,
    suffix: str,
    headers: list[route_components_pb2.HeaderMatcher],
    priority: int,
) -> route_components_pb2.Route:
    match = _class_match(route_class.match)
    match.headers.extend(headers)
    name = route_class.method_class + suffix
    # Per-route counters (vhost.<listener>.route.<name>.upstream_rq_retry, ...): what
    # each method class and priority was retried, timed out or shed.
    return route_components_pb2.Route(name=name, stat_prefix=name, match=match, route=_route_action(lst, route_class, priority))


def _class_match(match: ir.GrpcMethods | ir.HttpMethods | None) -> route_components_pb2.RouteMatch:
    if isinstance(match, ir.GrpcMethods):
        return route_components_pb2.RouteMatch(safe_regex=_regex("|".join(match.paths)))
    route_match = route_components_pb2.RouteMatch(prefix="/")
    if isinstance(match, ir.HttpMethods):
        route_match.headers.append(route_components_pb2.HeaderMatcher(
            name=":method", string_match=string_pb2.StringMatcher(safe_regex=_regex("|".join(match.methods))),
        ))
    return route_match


def _regex(pattern: str) -> regex_pb2.RegexMatcher:
    return regex_pb2.RegexMatcher(regex=pattern)


_LowMatch = tuple[str, list[route_components_pb2.HeaderMatcher]]  # route name suffix, headers


def _low_priority_matches(low: ir.LowPriority | None) -> list[_LowMatch]:
    """The header conditions of a low-priority request, one list per route (a route's
    headers must all match; the lists are alternatives)."""
    if low is None:
        return []
    asked = route_components_pb2.HeaderMatcher(name=low.header, string_match=string_pb2.StringMatcher(exact="low"))
    alternatives: list[_LowMatch] = []
    if low.callers:
        alternatives.append(("_low", [_caller_is(low.callers)]))
    if low.header_from_anyone:
        alternatives.append(("_low_asked", [asked]))
    elif low.header_setters:
        alternatives.append(("_low_asked", [asked, _caller_is(low.header_setters)]))
    return alternatives


def _caller_is(uris: tuple[str, ...]) -> route_components_pb2.HeaderMatcher:
    """The caller, as Envoy itself wrote it in x-forwarded-client-cert (``...;URI=<id>``)."""
    ids = "|".join(re.escape(uri) for uri in uris)
    return route_components_pb2.HeaderMatcher(
        name=XFCC, string_match=string_pb2.StringMatcher(safe_regex=_regex(f"(?:.*;)?URI=(?:{ids})(?:;.*)?")),
    )


def _route_action(lst: ir.Listener, route_class: ir.RouteClass, priority: int) -> route_components_pb2.RouteAction:
    action = route_components_pb2.RouteAction(priority=priority)
    backends = lst.read_backends if route_class.method_class == "reads" and lst.read_backends else lst.backends
    if len(backends) == 1:
        action.cluster = backends[0].upstream
    else:
        action.weighted_clusters.clusters.extend(
            route_components_pb2.WeightedCluster.ClusterWeight(
                name=b.upstream, weight=wrappers_pb2.UInt32Value(value=b.share)
            )
            for b in backends
        )
    # Zero turns the limit off (streams may last for hours).
    action.timeout.CopyFrom(duration(route_class.timeout_s))
    if lst.protocol == "grpc":
        # A caller's own deadline (grpc-timeout) applies when it is shorter.
        action.max_stream_duration.grpc_timeout_header_max.CopyFrom(duration(route_class.timeout_s))
    if route_class.retry is not None:
        action.retry_policy.CopyFrom(_retry_policy(route_class.retry))
        if route_class.retry.hedge:
            action.hedge_policy.hedge_on_per_try_timeout = True
    action.request_mirror_policies.extend(
        _mirror_policy(m) for m in lst.mirrors if route_class.method_class in m.method_classes
    )
    return action


_PREVIOUS_HOSTS = route_components_pb2.RetryPolicy.RetryHostPredicate(
    name="envoy.retry_host_predicates.previous_hosts",
    typed_config=packed(previous_hosts_pb2.PreviousHostsPredicate()),
)


def _retry_policy(retry: ir.Retry) -> route_components_pb2.RetryPolicy:
    policy = route_components_pb2.RetryPolicy(
        retry_on=retry.retry_on,
        num_retries=wrappers_pb2.UInt32Value(value=retry.attempts),
        # Another try goes to another endpoint where there is one.
        retry_host_predicate=[_PREVIOUS_HOSTS],
        host_selection_retry_max_attempts=3,
    )
    if retry.per_try_timeout_s is not None:
        policy.per_try_timeout.CopyFrom(duration(retry.per_try_timeout_s))
    return policy


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
