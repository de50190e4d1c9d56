"""The ADS server: state-of-the-world and delta xDS streams over ``xds_server.cache``.

``AdsServer(cache, limits).register(server)`` adds ``envoy.service.discovery.v3.
AggregatedDiscoveryService`` and the per-type services (``TYPE_SERVICES``) to a
``grpc.aio.Server`` (create it with ``options=SERVER_OPTIONS``). ``testkit.ads_client`` is an Envoy-like scripted client
for tests and load generation."""

from xds_server.ads.server import (
    DELTA_METHOD,
    SERVER_OPTIONS,
    SERVICE,
    SOTW_METHOD,
    TYPE_SERVICES,
    AdsServer,
    TypeService,
)

__all__ = [
    "DELTA_METHOD",
    "SERVER_OPTIONS",
    "SERVICE",
    "SOTW_METHOD",
    "TYPE_SERVICES",
    "AdsServer",
    "TypeService",
]
