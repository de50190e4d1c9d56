"""The host's certificate and where it goes: the local SDS (Envoy's listener and xDS
secrets) and the agent's control channel, from the first certificate to each renewal.

``HostSecrets.start`` gets the first certificate (``host_identity``) and serves it on
the SDS socket before Envoy starts, so Envoy's first connection to the xds_server is
already mTLS. A new shard config changes which TLS providers the SDS serves; a new
certificate replaces every secret and re-creates the control channel.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc

from xds_server.config import RuntimeConfig
from xds_server.security.identity import IdentityError, gateway_id

from .config import SidecarSettings
from .control import ControlClient
from .errors import SidecarError
from .host_identity import FilesIdentity, HostIdentity, SignedIdentity, channel_credentials
from .identity import Credentials
from .log import EventLog
from .sds import LocalSds, SdsError

SDS_SOCKET = "sds.sock"
IDENTITY_DIR = "identity"


def _join_token(settings: SidecarSettings) -> str | None:
    if settings.join_token is not None:
        return settings.join_token.get_secret_value().strip()
    if settings.join_token_file is not None:
        try:
            return settings.join_token_file.read_text().strip()
        except OSError as e:
            raise SidecarError(f"--join-token-file {settings.join_token_file}: {e.strerror or e}") from None
    return None


def host_identity(settings: SidecarSettings, state_dir: Path, log: EventLog) -> HostIdentity:
    """Where this host's certificate comes from: files, or the xds_server's CA."""
    if settings.tls_cert and settings.tls_key and settings.tls_bundle:
        return FilesIdentity(settings.tls_cert, settings.tls_key, settings.tls_bundle, log)
    try:
        identity = gateway_id(settings.shard)
    except IdentityError as e:
        raise SidecarError(f"--shard: {e}") from None
    bundle = None
    if settings.trust_bundle is not None:
        try:
            bundle = settings.trust_bundle.read_bytes()
        except OSError as e:
            raise SidecarError(f"--trust-bundle {settings.trust_bundle}: {e.strerror or e}") from None
    return SignedIdentity(
        identity=identity, directory=state_dir / IDENTITY_DIR, server=settings.server,
        join_server=settings.join_address, shard=settings.shard, node_id=settings.node_id,
        join_token=_join_token(settings), trust_bundle=bundle,
        rpc_timeout_s=settings.rpc_timeout_s, log=log, server_name=settings.server_name,
    )


def tls_providers(config: RuntimeConfig) -> set[str]:
    """The TLS provider names the shard's listeners use: the SDS serves each."""
    return {lst.tls_creds for lst in config.proxy_config.public_listeners.values() if lst.tls_creds}


class HostSecrets:
    def __init__(self, identity: HostIdentity, sds: LocalSds, creds: Credentials) -> None:
        self._identity = identity
        self._sds = sds
        self.creds = creds
        self._providers: set[str] = set()
        self._control: ControlClient | None = None
        identity.subscribe(self._renewed)

    @classmethod
    async def start(cls, settings: SidecarSettings, state_dir: Path, log: EventLog) -> HostSecrets:
        """The first certificate, served on the SDS socket; SidecarError if there is none."""
        identity = host_identity(settings, state_dir, log)
        creds = await identity.first()
        try:
            sds = LocalSds((state_dir / SDS_SOCKET).absolute(), settings.shard)
        except SdsError as e:
            raise SidecarError(str(e)) from None
        await sds.start()
        sds.serve((), creds)
        return cls(identity, sds, creds)

    @property
    def sds_socket(self) -> str:
        return str(self._sds.socket_path)

    def channel_credentials(self) -> grpc.ChannelCredentials:
        return channel_credentials(self.creds)

    def follow(self, control: ControlClient) -> None:
        """Re-create ``control``'s channel with each new certificate."""
        self._control = control

    def config_changed(self, config: RuntimeConfig) -> None:
        self._providers = tls_providers(config)
        self._sds.serve(self._providers)

    def _renewed(self, creds: Credentials) -> None:
        self.creds = creds
        self._sds.serve(self._providers, creds)
        if self._control is not None:
            self._control.rotate(channel_credentials(creds))

    async def run(self, stop: asyncio.Event) -> None:
        """Renew (or re-read the files) until ``stop``."""
        await self._identity.run(stop)

    async def close(self) -> None:
        await self._sds.stop()
