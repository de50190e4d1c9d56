"""The Envoy bootstrap of a gateway instance: who it is and where its xds_server is.

Everything else (listeners, routes, clusters, endpoints) arrives over ADS, so the
bootstrap is small and the same for every instance of a shard but for ``node.id``.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

from common.hostport import split_addresses, split_host_port

from .stats import LATENCY_BUCKETS_MS, STATS_FLUSH_INTERVAL_S

XDS_CLUSTER = "dgw_xds"
# The host sidecar's SDS server on a Unix socket: listeners with ``tls_creds`` (and
# the client proxy) get certificates and trust bundles from it, never from a file.
SDS_CLUSTER = "dgw_sds"
# What Envoy's own connection to the xds_server uses when it is mTLS: the host's
# gateway certificate and the CA bundle, both from the sidecar's SDS (``dgw_sds``).
XDS_CERTIFICATE_SECRET = "dgw.xds.certificate"
XDS_TRUST_BUNDLE_SECRET = "dgw.xds.trust_bundle"
DEFAULT_XDS_SERVER_ID = "spiffe://dgw.local/xds-server"
# Envoy retries a broken ADS stream with jittered backoff from this base.
XDS_CONNECT_TIMEOUT = "1s"
# A broken ADS stream is re-opened with jittered backoff from 0.25 s up to 5 s (Envoy's
# own default grows to 30 s): a restarted server, or another replica, has its Envoys
# back within seconds, and the jitter still spreads a fleet's reconnects.
XDS_RETRY = {"retry_back_off": {"base_interval": "0.25s", "max_interval": "5s"}}


# The overload manager protects Envoy itself, whatever the shard's policies say: past
# these, Envoy refuses new connections (downstream) or sheds requests (heap) rather
# than fall over. Fixed defaults, sized for a gateway host: a gateway Envoy holds
# tens of MiB and hundreds of connections in normal use.
MAX_DOWNSTREAM_CONNECTIONS = 50_000
MAX_HEAP_BYTES = 1 << 30
_FIXED_HEAP = "envoy.resource_monitors.fixed_heap"
OVERLOAD_MANAGER: dict[str, Any] = {
    "refresh_interval": "0.25s",
    "resource_monitors": [
        {"name": "envoy.resource_monitors.global_downstream_max_connections", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.resource_monitors.downstream_connections.v3."
                     "DownstreamConnectionsConfig",
            "max_active_downstream_connections": MAX_DOWNSTREAM_CONNECTIONS,
        }},
        {"name": _FIXED_HEAP, "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.resource_monitors.fixed_heap.v3.FixedHeapConfig",
            "max_heap_size_bytes": MAX_HEAP_BYTES,
        }},
    ],
    "actions": [
        # From 80 % of the heap, idle connections are closed sooner (down to a fifth
        # of their timeout at 95 %), freeing their buffers first.
        {"name": "envoy.overload_actions.reduce_timeouts",
         "triggers": [{"name": _FIXED_HEAP, "scaled": {"scaling_threshold": 0.80, "saturation_threshold": 0.95}}],
         "typed_config": {
             "@type": "type.googleapis.com/envoy.config.overload.v3.ScaleTimersOverloadActionConfig",
             "timer_scale_factors": [{"timer": "HTTP_DOWNSTREAM_CONNECTION_IDLE", "min_scale": {"value": 20}}],
         }},
        {"name": "envoy.overload_actions.shrink_heap",
         "triggers": [{"name": _FIXED_HEAP, "threshold": {"value": 0.90}}]},
        # Near the limit new requests get 503 at once; those in flight finish.
        {"name": "envoy.overload_actions.stop_accepting_requests",
         "triggers": [{"name": _FIXED_HEAP, "threshold": {"value": 0.95}}]},
    ],
}


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def make_bootstrap(
    shard: str,
    node_id: str,
    xds: str,
    delta: bool = False,
    sds_socket: str | None = None,
    xds_tls: bool = False,
    xds_server_id: str = DEFAULT_XDS_SERVER_ID,
    admin_socket: str | None = None,
) -> dict[str, Any]:
    """An Envoy v3 bootstrap (as a dict ready for YAML/JSON) that gets all of its
    configuration from the xds_server at ``xds`` over one ADS stream, and, with
    ``sds_socket``, its secrets from the host's SDS server on that Unix socket.

    ``xds_tls`` (needs ``sds_socket``): the ADS connection is mTLS — Envoy presents
    ``dgw.xds.certificate`` and accepts only a server certificate that chains to
    ``dgw.xds.trust_bundle`` and names ``xds_server_id``; both secrets come over SDS,
    so a renewed certificate is used for the next connection without a restart.

    ``admin_socket``: Envoy's admin on that Unix socket, owner-only (for an Envoy you
    run yourself: ``EnvoyProcess`` puts the admin of every Envoy it starts on a socket
    of its own). Admin never listens on a TCP port: any local user could reach it."""
    if xds_tls and not sds_socket:
        raise ValueError("an mTLS connection to the xds_server needs the host's SDS socket (sds_socket)")
    # Several replicas (``a:18000,b:18000``): one endpoint each; Envoy's ADS stream
    # goes to one of them and, when it breaks, to another.
    servers = split_addresses(xds, "--xds")
    xds_host = servers[0][0]
    config: dict[str, Any] = {
        "node": {"id": node_id, "cluster": shard},
        "dynamic_resources": {
            "ads_config": {
                "api_type": "DELTA_GRPC" if delta else "GRPC",
                "transport_api_version": "V3",
                "grpc_services": [{"envoy_grpc": {"cluster_name": XDS_CLUSTER, "retry_policy": XDS_RETRY}}],
                "set_node_on_first_message_only": True,
            },
            "cds_config": {"ads": {}, "resource_api_version": "V3"},
            "lds_config": {"ads": {}, "resource_api_version": "V3"},
        },
        "static_resources": {
            "clusters": [
                {
                    "name": XDS_CLUSTER,
                    "type": "STATIC" if _is_ip(xds_host) else "LOGICAL_DNS",
                    "connect_timeout": XDS_CONNECT_TIMEOUT,
                    "typed_extension_protocol_options": {
                        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                            "explicit_http_config": {"http2_protocol_options": {}},
                        }
                    },
                    "load_assignment": {
                        "cluster_name": XDS_CLUSTER,
                        "endpoints": [
                            {
                                "lb_endpoints": [
                                    {"endpoint": {"address": {"socket_address": {
                                        "address": host, "port_value": port}}}}
                                    for host, port in servers
                                ]
                            }
                        ],
                    },
                }
            ]
        },
        # Shadow percentages are runtime fractions; an admin-writable layer lets an
        # operator adjust them on one host while debugging.
        "layered_runtime": {
            "layers": [
                {"name": "static", "static_layer": {}},
                {"name": "admin", "admin_layer": {}},
            ]
        },
        # Latency buckets fine enough to compare DALs (envoy_proxy/stats.py), merged
        # each second, so the sidecar's samples are fresh.
        "stats_config": {"histogram_bucket_settings": [
            {"match": {"safe_regex": {"regex": ".*"}}, "buckets": list(LATENCY_BUCKETS_MS)}
        ]},
        "stats_flush_interval": f"{STATS_FLUSH_INTERVAL_S:g}s",
        "overload_manager": OVERLOAD_MANAGER,
    }
    if sds_socket:
        config["static_resources"]["clusters"].append(sds_cluster(sds_socket))
    if xds_tls:
        config["static_resources"]["clusters"][0]["transport_socket"] = xds_transport_socket(
            xds_host, xds_server_id
        )
    if admin_socket:
        config["admin"] = {"address": {"pipe": {"path": admin_socket, "mode": 0o600}}}
    return config


def _sds_secret(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "sds_config": {
            "api_config_source": {
                "api_type": "GRPC",
                "transport_api_version": "V3",
                "grpc_services": [{"envoy_grpc": {"cluster_name": SDS_CLUSTER}}],
            },
            "resource_api_version": "V3",
        },
    }


def xds_transport_socket(server_host: str, server_id: str) -> dict[str, Any]:
    """mTLS to the xds_server: our certificate and its CA from the local SDS; the
    server must present ``server_id`` (its URI SAN); ALPN h2, as gRPC requires."""
    context: dict[str, Any] = {
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
        "common_tls_context": {
            "alpn_protocols": ["h2"],
            "tls_certificate_sds_secret_configs": [_sds_secret(XDS_CERTIFICATE_SECRET)],
            "combined_validation_context": {
                "default_validation_context": {
                    "match_typed_subject_alt_names": [
                        {"san_type": "URI", "matcher": {"exact": server_id}}
                    ]
                },
                "validation_context_sds_secret_config": _sds_secret(XDS_TRUST_BUNDLE_SECRET),
            },
        },
    }
    if not _is_ip(server_host):
        context["sni"] = server_host
    return {"name": "envoy.transport_sockets.tls", "typed_config": context}


def sds_cluster(socket_path: str) -> dict[str, Any]:
    """The static cluster ``dgw_sds``: gRPC (HTTP/2) to the SDS server on a Unix socket."""
    return {
        "name": SDS_CLUSTER,
        "type": "STATIC",
        "connect_timeout": XDS_CONNECT_TIMEOUT,
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        },
        "load_assignment": {
            "cluster_name": SDS_CLUSTER,
            "endpoints": [
                {"lb_endpoints": [{"endpoint": {"address": {"pipe": {"path": socket_path}}}}]}
            ],
        },
    }


@dataclass(frozen=True)
class UpstreamTls:
    """mTLS that a client-side proxy originates to the gateways: its own certificate and
    the trust bundle from the SDS server on ``sds_socket`` (secrets ``certificate`` and
    ``trust_bundle``), and the one identity a gateway must present (``gateway_san``,
    ``spiffe://TD/gateway/SHARD``)."""

    sds_socket: str
    gateway_san: str
    certificate: str
    trust_bundle: str
    sni: str = ""


def _sds_config() -> dict[str, Any]:
    return {
        "api_config_source": {
            "api_type": "GRPC",
            "transport_api_version": "V3",
            "grpc_services": [{"envoy_grpc": {"cluster_name": SDS_CLUSTER}}],
        },
        "resource_api_version": "V3",
    }


def upstream_tls_socket(tls: UpstreamTls) -> dict[str, Any]:
    """The ``transport_socket`` of a cluster whose peers are gateways: a client
    certificate is presented, and the peer must chain to the bundle *and* carry the
    gateway's SPIFFE ID as its URI SAN (a certificate of another workload of the same CA
    is refused)."""
    context: dict[str, Any] = {
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
        "common_tls_context": {
            "tls_certificate_sds_secret_configs": [{"name": tls.certificate, "sds_config": _sds_config()}],
            "combined_validation_context": {
                "default_validation_context": {
                    "match_typed_subject_alt_names": [
                        {"san_type": "URI", "matcher": {"exact": tls.gateway_san}},
                    ],
                },
                "validation_context_sds_secret_config": {"name": tls.trust_bundle, "sds_config": _sds_config()},
            },
        },
    }
    if tls.sni:
        context["sni"] = tls.sni
    return {"name": "envoy.transport_sockets.tls", "typed_config": context}


def make_client_bootstrap(
    node_id: str,
    xds: str,
    target: str,
    listen: str,
    delta: bool = False,
    tls: UpstreamTls | None = None,
    xds_tls: bool = False,
    admin_socket: str | None = None,
) -> dict[str, Any]:
    """A client-side forward proxy: ``listen`` → the gateway hosts registered under
    ``target`` (``ADDRESS/LISTENER``), found over EDS from the xds_server.

    It forwards the byte stream (tcp_proxy), so it serves HTTP, gRPC and database
    protocols alike. With ``tls`` it originates mTLS to the gateways (the application
    speaks plaintext to the proxy on loopback); with ``xds_tls`` too, its connection to
    the xds_server is mTLS with the same identity (``make_bootstrap``'s ``xds_tls``).
    """
    from xds_server.translate import DISCOVERY_SHARD

    address, sep, listener = target.partition("/")
    if not sep or not address or not listener:
        raise ValueError(f"--client {target!r} is not ADDRESS/LISTENER (e.g. shard.dgwkv/secure_grpc)")
    listen_host, listen_port = split_host_port(listen, "--listen")
    if xds_tls and tls is None:
        raise ValueError("xds_tls needs tls: the proxy's identity comes over its SDS socket")
    config = make_bootstrap(DISCOVERY_SHARD, node_id, xds, delta, sds_socket=tls.sds_socket if tls else None,
                            xds_tls=xds_tls, admin_socket=admin_socket)  # fmt: skip
    del config["dynamic_resources"]["lds_config"]
    del config["dynamic_resources"]["cds_config"]
    gateway: dict[str, Any] = {
        "name": "gateway",
        "type": "EDS",
        "connect_timeout": "1s",
        "eds_cluster_config": {
            "service_name": target,
            "eds_config": {"ads": {}, "resource_api_version": "V3"},
        },
    }
    if tls is not None:
        gateway["transport_socket"] = upstream_tls_socket(tls)
    config["static_resources"]["clusters"].append(gateway)
    config["static_resources"]["listeners"] = [
        {
            "name": "client",
            "address": {"socket_address": {"address": listen_host, "port_value": listen_port}},
            "filter_chains": [
                {
                    "filters": [
                        {
                            "name": "envoy.filters.network.tcp_proxy",
                            "typed_config": {
                                "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
                                "stat_prefix": "client",
                                "cluster": "gateway",
                            },
                        }
                    ]
                }
            ],
        }
    ]
    return config
