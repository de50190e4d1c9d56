"""The sidecar's SDS server: Envoy on this host gets its certificate, private key and
trust bundle here, over a Unix socket that only this host's user can open.

It is the control plane's own ADS machinery (snapshot cache + SotW/delta streams) with a
cache that holds secrets only, so the protocol rules are implemented once. Each new set
of credentials replaces the snapshot; Envoy applies a new certificate to new
handshakes at once, without a restart and without closing open connections.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path

import grpc

from envoy_proxy.bootstrap import XDS_CERTIFICATE_SECRET, XDS_TRUST_BUNDLE_SECRET
from xds_server.ads import SERVER_OPTIONS, AdsServer
from xds_server.cache.store import SnapshotCache
from xds_server.resources import SECRET, Resources
from xds_server.security.providers import certificate_secret, trust_bundle_secret
from xds_server.translate.secrets import certificate_secret as certificate_resource
from xds_server.translate.secrets import trust_bundle_secret as trust_bundle_resource

from .identity import Credentials

log = logging.getLogger("sidecar.sds")

# A Unix socket path is limited to 107 bytes on Linux.
_MAX_SOCKET_PATH = 107


class SdsError(Exception):
    """The SDS socket cannot be served; the message says what to change."""


def secret_resources(providers: Iterable[str], creds: Credentials) -> Resources:
    """For each TLS provider name a listener uses, its certificate and trust bundle;
    and Envoy's own for its connection to the xds_server (``dgw.xds.*``)."""
    secrets = {}
    names = [(certificate_secret(p), trust_bundle_secret(p)) for p in sorted(set(providers))]
    for cert, bundle in [(XDS_CERTIFICATE_SECRET, XDS_TRUST_BUNDLE_SECRET), *names]:
        secrets[cert] = certificate_resource(cert, creds.chain_pem, creds.key_pem)
        secrets[bundle] = trust_bundle_resource(bundle, creds.bundle_pem)
    return Resources({SECRET: secrets})


class LocalSds:
    def __init__(self, socket_path: Path, shard: str) -> None:
        if len(str(socket_path)) > _MAX_SOCKET_PATH:
            raise SdsError(
                f"SDS socket path {str(socket_path)[:60]}... is longer than {_MAX_SOCKET_PATH} "
                "bytes: use a shorter --state-dir"
            )
        self.socket_path = socket_path
        self.shard = shard
        self._cache = SnapshotCache()
        self._server: grpc.aio.Server | None = None
        self._providers: set[str] = set()
        self._creds: Credentials | None = None

    @property
    def address(self) -> str:
        return f"unix:{self.socket_path}"

    async def start(self) -> None:
        self.socket_path.parent.mkdir(parents=True, exist_ok=True)
        self.socket_path.unlink(missing_ok=True)
        server = grpc.aio.server(options=[*SERVER_OPTIONS, ("grpc.so_reuseport", 0)])
        AdsServer(self._cache, counted=False).register(server)  # not the control plane's metrics
        # The socket carries private keys: created owner-only (umask), never world-readable.
        old = os.umask(0o177)
        try:
            server.add_insecure_port(self.address)
            await server.start()
        finally:
            os.umask(old)
        self._server = server
        log.info("event=sds_listening socket=%s", self.socket_path)

    def serve(self, providers: Iterable[str], creds: Credentials | None = None) -> bool:
        """Serve ``creds`` (or the last ones) under these providers' names; True if
        anything Envoy sees changed."""
        self._providers = set(providers)
        if creds is not None:
            self._creds = creds
        if self._creds is None:
            return False
        changed = self._cache.set_shard(self.shard, secret_resources(self._providers, self._creds))
        if changed:
            log.info(
                "event=sds_secrets shard=%s providers=%s serial=%x",
                self.shard, ",".join(sorted(self._providers)), self._creds.serial,
            )
        return changed

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(grace=0.5)
            self._server = None
        self.socket_path.unlink(missing_ok=True)
