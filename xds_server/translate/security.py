"""The security parts of a listener in Envoy's words: mTLS with secrets from the host's
SDS, and RBAC (deny by default) from the shard's consumers.

Authorization of grpc and http listeners lives in the *route* configuration (a
per-route RBAC override of a deny-all filter), so a change of consumers arrives over RDS
and no listener is drained: allowed callers keep their connections. A tcp listener has
no routes; its RBAC is a network filter, checked when a connection opens.
"""

from __future__ import annotations

from envoy.config.accesslog.v3 import accesslog_pb2
from envoy.config.core.v3 import (
    base_pb2,
    config_source_pb2,
    grpc_service_pb2,
    substitution_format_string_pb2,
)
from envoy.config.rbac.v3 import rbac_pb2
from envoy.config.route.v3 import route_components_pb2
from envoy.extensions.access_loggers.filters.cel.v3 import cel_pb2
from envoy.extensions.access_loggers.stream.v3 import stream_pb2
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as http_rbac_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.filters.network.rbac.v3 import rbac_pb2 as network_rbac_pb2
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2, tls_pb2
from envoy.type.matcher.v3 import path_pb2, regex_pb2, string_pb2
from google.protobuf import any_pb2, wrappers_pb2

from envoy_proxy.bootstrap import SDS_CLUSTER
from xds_server.security.providers import HTTP_READ_METHODS

from . import ir
from .packing import packed

TLS_TRANSPORT_SOCKET = "envoy.transport_sockets.tls"
HTTP_RBAC = "envoy.filters.http.rbac"
NETWORK_RBAC = "envoy.filters.network.rbac"
STDOUT_ACCESS_LOG = "envoy.access_loggers.stdout"
CEL_FILTER = "envoy.access_loggers.extension_filters.cel"

# Secrets come from the sidecar on the same host, never from the control plane: the
# private key never leaves the host that made it.
_SDS = config_source_pb2.ConfigSource(
    api_config_source=config_source_pb2.ApiConfigSource(
        api_type=config_source_pb2.ApiConfigSource.GRPC,
        transport_api_version=config_source_pb2.ApiVersion.V3,
        grpc_services=[grpc_service_pb2.GrpcService(
            envoy_grpc=grpc_service_pb2.GrpcService.EnvoyGrpc(cluster_name=SDS_CLUSTER),
        )],
    ),
    resource_api_version=config_source_pb2.ApiVersion.V3,
)
# Every denied request is logged with the caller's identity. A gRPC caller is denied
# with HTTP 200 and grpc-status PERMISSION_DENIED (Envoy's gRPC local reply), so its
# line is chosen and worded by the gRPC status.
_DENIED_LOG_FORMAT = (
    "dgw_denied listener=%s peer=%%DOWNSTREAM_PEER_URI_SAN%% method=%%REQ(:METHOD)%% "
    "path=%%REQ(:PATH)%% %s\n"
)


_DENIED_CONNECTION_FORMAT = (
    "dgw_denied listener=%s peer=%%DOWNSTREAM_PEER_URI_SAN%% connection=%%CONNECTION_TERMINATION_DETAILS%%\n"
)


def transport_socket(tls: ir.Tls) -> base_pb2.TransportSocket:
    """mTLS: the client must present a certificate chaining to the trust bundle."""
    context = tls_pb2.DownstreamTlsContext(
        require_client_certificate=wrappers_pb2.BoolValue(value=True),
        common_tls_context=tls_pb2.CommonTlsContext(
            tls_certificate_sds_secret_configs=[
                secret_pb2.SdsSecretConfig(name=tls.certificate, sds_config=_SDS),
            ],
            validation_context_sds_secret_config=secret_pb2.SdsSecretConfig(
                name=tls.trust_bundle, sds_config=_SDS,
            ),
            alpn_protocols=list(tls.alpn),
        ),
    )
    return base_pb2.TransportSocket(name=TLS_TRANSPORT_SOCKET, typed_config=packed(context))


def http_rbac_filter() -> hcm_pb2.HttpFilter:
    """Deny everything unless the route says otherwise (``route_rbac``): a route table
    that has not arrived yet, or lost its override, fails closed."""
    deny_all = http_rbac_pb2.RBAC(rules=rbac_pb2.RBAC(action=rbac_pb2.RBAC.ALLOW))
    return hcm_pb2.HttpFilter(name=HTTP_RBAC, typed_config=packed(deny_all))


def route_rbac(lst: ir.Listener, authz: ir.Authz) -> dict[str, any_pb2.Any]:
    """The per-route override with the listener's real policies (``typed_per_filter_config``
    of its virtual host)."""
    per_route = http_rbac_pb2.RBACPerRoute(rbac=http_rbac_pb2.RBAC(rules=_rules(lst.protocol, authz)))
    return {HTTP_RBAC: packed(per_route)}


def denied_access_log(lst: ir.Listener) -> accesslog_pb2.AccessLog:
    """One line per denied request on Envoy's stdout, naming the caller's identity."""
    if lst.protocol == "grpc":
        status = "grpc_status=%GRPC_STATUS%"
        denied = accesslog_pb2.AccessLogFilter(grpc_status_filter=accesslog_pb2.GrpcStatusFilter(
            statuses=[accesslog_pb2.GrpcStatusFilter.PERMISSION_DENIED],
        ))
    else:
        status = "status=%RESPONSE_CODE%"
        denied = accesslog_pb2.AccessLogFilter(status_code_filter=accesslog_pb2.StatusCodeFilter(
            comparison=accesslog_pb2.ComparisonFilter(
                op=accesslog_pb2.ComparisonFilter.EQ,
                value=base_pb2.RuntimeUInt32(default_value=403, runtime_key="dgw.denied_log_status"),
            ),
        ))
    stdout = stream_pb2.StdoutAccessLog(log_format=substitution_format_string_pb2.SubstitutionFormatString(
        text_format_source=base_pb2.DataSource(inline_string=_DENIED_LOG_FORMAT % (lst.listener, status)),
    ))
    return accesslog_pb2.AccessLog(name=STDOUT_ACCESS_LOG, filter=denied, typed_config=packed(stdout))


def denied_connection_log(lst: ir.Listener) -> accesslog_pb2.AccessLog:
    """A tcp listener's counterpart of ``denied_access_log``: one line per connection
    its network RBAC closed, naming the caller's identity (the filter leaves its verdict
    in the connection's termination details)."""
    stdout = stream_pb2.StdoutAccessLog(log_format=substitution_format_string_pb2.SubstitutionFormatString(
        text_format_source=base_pb2.DataSource(inline_string=_DENIED_CONNECTION_FORMAT % lst.listener),
    ))
    denied = accesslog_pb2.AccessLogFilter(extension_filter=accesslog_pb2.ExtensionFilter(
        name=CEL_FILTER,
        typed_config=packed(cel_pb2.ExpressionFilter(
            expression="connection.termination_details.startsWith('rbac_access_denied')",
        )),
    ))
    return accesslog_pb2.AccessLog(name=STDOUT_ACCESS_LOG, filter=denied, typed_config=packed(stdout))


def network_rbac_filter(lst: ir.Listener, authz: ir.Authz) -> network_rbac_pb2.RBAC:
    return network_rbac_pb2.RBAC(stat_prefix=f"{lst.listener}.", rules=_rules("tcp", authz))


def _rules(protocol: ir.Protocol, authz: ir.Authz) -> rbac_pb2.RBAC:
    """ALLOW policies by group; a caller matching none is denied."""
    rules = rbac_pb2.RBAC(action=rbac_pb2.RBAC.ALLOW)
    if authz.read_write:
        rules.policies["read-write"].CopyFrom(rbac_pb2.Policy(
            permissions=[rbac_pb2.Permission(any=True)],
            principals=[_principal(uri) for uri in authz.read_write],
        ))
    if authz.read_only:
        rules.policies["read-only"].CopyFrom(rbac_pb2.Policy(
            permissions=[_reads(protocol, authz)],
            principals=[_principal(uri) for uri in authz.read_only],
        ))
    return rules


def _principal(uri: str) -> rbac_pb2.Principal:
    return rbac_pb2.Principal(authenticated=rbac_pb2.Principal.Authenticated(
        principal_name=string_pb2.StringMatcher(exact=uri),
    ))


def _reads(protocol: ir.Protocol, authz: ir.Authz) -> rbac_pb2.Permission:
    if protocol == "tcp":
        # A database does its own statement-level checks: both groups may connect.
        return rbac_pb2.Permission(any=True)
    if protocol == "http":
        return rbac_pb2.Permission(or_rules=rbac_pb2.Permission.Set(rules=[
            rbac_pb2.Permission(header=route_components_pb2.HeaderMatcher(
                name=":method", string_match=string_pb2.StringMatcher(exact=method),
            ))
            for method in HTTP_READ_METHODS
        ]))
    return rbac_pb2.Permission(or_rules=rbac_pb2.Permission.Set(rules=[
        rbac_pb2.Permission(url_path=path_pb2.PathMatcher(path=string_pb2.StringMatcher(
            safe_regex=regex_pb2.RegexMatcher(regex=pattern),
        )))
        for pattern in authz.grpc_read_methods
    ]))
