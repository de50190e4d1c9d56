"""The host's certificate from first start to every renewal, and who is told of it.

Two sources, one shape (``Credentials``):

- ``SignedIdentity`` (the default, ``local_ca``): a key made here and a certificate the
  xds_server signs from its CSR — the first with a one-time join token on the server's
  join port (checked against ``--trust-bundle``), each renewal with the current
  certificate on the control port. Key, certificate and bundle are kept in the state
  dir (the key 0600), so a restart needs no new token while the certificate is valid.
- ``FilesIdentity`` (``files``): certificate, key and bundle read from disk and
  re-read when they change, for hosts whose certificates come from elsewhere.

Each new set goes to every subscriber: the local SDS (Envoy's listener and xds
secrets) and the control channel (re-created with the new certificate).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
from collections.abc import Callable
from pathlib import Path

import grpc
import watchfiles
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from common.backoff import backoff_delay, jittered
from common.files import write_private
from dgw_api.v1 import gateway_pb2, gateway_pb2_grpc
from xds_server.security.identity import SpiffeId

from .control import channel_target
from .errors import SidecarError
from .identity import Credentials, IdentityKeeper, Signed
from .log import EventLog

KEY_FILE = "key.pem"
CERT_FILE = "cert.pem"
BUNDLE_FILE = "bundle.pem"

Subscriber = Callable[[Credentials], None]
# A server that does not answer yet is waited for; any other refusal ends the start.
_UNREACHABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
FIRST_RETRY_MAX_S = 5.0


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class PemError(ValueError):
    """Which of the three is unusable (``part``: cert, key or bundle), and why; the
    message never quotes the input (a key is secret)."""

    def __init__(self, part: str, message: str) -> None:
        super().__init__(message)
        self.part = part


def credentials_from_pem(key_pem: bytes, chain_pem: bytes, bundle_pem: bytes) -> Credentials:
    """Credentials from PEM; PemError when one does not parse or they do not belong together."""
    try:
        leaf = x509.load_pem_x509_certificate(chain_pem)
    except ValueError:
        raise PemError("cert", "is not a PEM certificate") from None
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):
        raise PemError("key", "is not an unencrypted PEM private key") from None
    try:
        x509.load_pem_x509_certificates(bundle_pem)
    except ValueError:
        raise PemError("bundle", "is not a PEM certificate bundle") from None
    if _spki(key.public_key()) != _spki(leaf.public_key()):
        raise PemError("key", "does not belong to the certificate")
    return Credentials(
        key_pem=key_pem, chain_pem=chain_pem, bundle_pem=bundle_pem, serial=leaf.serial_number,
        not_before=leaf.not_valid_before_utc, not_after=leaf.not_valid_after_utc,
    )


def read_credentials(cert: tuple[str, Path], key: tuple[str, Path], bundle: tuple[str, Path]) -> Credentials:
    """Credentials from three files, each given with the flag that named it;
    ValueError naming the flag, the file and what is wrong with it."""
    files = {"cert": cert, "key": key, "bundle": bundle}
    data = {}
    for part, (flag, path) in files.items():
        try:
            data[part] = path.read_bytes()
        except OSError as e:
            raise ValueError(f"{flag} {path}: {e.strerror or e}") from None
    try:
        return credentials_from_pem(data["key"], data["cert"], data["bundle"])
    except PemError as e:
        flag, path = files[e.part]
        raise ValueError(f"{flag} {path} {e}") from None


def _spki(public: object) -> bytes:
    encode = getattr(public, "public_bytes", None)
    if encode is None:
        raise ValueError("unsupported key type")
    der: bytes = encode(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return der


def channel_credentials(creds: Credentials) -> grpc.ChannelCredentials:
    """mTLS to the xds_server's control port with ``creds``."""
    return grpc.ssl_channel_credentials(creds.bundle_pem, creds.key_pem, creds.chain_pem)


class SignedIdentity:
    """The ``local_ca`` source: IdentityKeeper + the xds_server as signer + a stored copy."""

    def __init__(
        self,
        *,
        identity: SpiffeId,
        directory: Path,
        server: str,
        join_server: str,
        shard: str,
        node_id: str,
        join_token: str | None,
        trust_bundle: bytes | None,
        rpc_timeout_s: float,
        log: EventLog,
        server_name: str = "",
    ) -> None:
        self._dir = directory
        self._server, self._join_server = server, join_server
        self._server_name = server_name
        self._shard, self._node = shard, node_id
        self._join_token = join_token
        self._trust_bundle = trust_bundle
        self._timeout = rpc_timeout_s
        self._log = log
        self._subscribers: list[Subscriber] = []
        self.keeper = IdentityKeeper(identity, self._sign, self._new)

    def subscribe(self, subscriber: Subscriber) -> None:
        self._subscribers.append(subscriber)

    def _new(self, creds: Credentials) -> None:
        write_private(self._dir / KEY_FILE, creds.key_pem)
        write_private(self._dir / CERT_FILE, creds.chain_pem)
        write_private(self._dir / BUNDLE_FILE, creds.bundle_pem)
        for subscriber in self._subscribers:
            subscriber(creds)

    def _stored(self) -> Credentials | None:
        try:
            creds = credentials_from_pem(
                (self._dir / KEY_FILE).read_bytes(), (self._dir / CERT_FILE).read_bytes(),
                (self._dir / BUNDLE_FILE).read_bytes(),
            )
        except FileNotFoundError:
            return None
        except ValueError as e:
            self._log.warning("stored_certificate_unusable", dir=str(self._dir), error=str(e)[:200])
            return None
        return creds if creds.not_after > _now() + dt.timedelta(seconds=30) else None

    async def first(self) -> Credentials:
        """A valid certificate: the stored one, else one signed with the join token."""
        stored = self._stored()
        if stored is not None and self._trust_bundle not in (None, stored.bundle_pem):
            # Signed by another CA than the server's now (its data dir was replaced).
            self._log.info("stored_certificate_from_another_ca", dir=str(self._dir))
            stored = None
        if stored is not None:
            self.keeper.current = stored
            self._log.info("certificate_loaded", serial=f"{stored.serial:x}", not_after=stored.not_after.isoformat())
            return stored
        if not self._join_token:
            raise SidecarError(
                "this host has no certificate yet: give a join token with --join-token-file FILE, "
                "--join-token or $DGW_JOIN_TOKEN (`dgw token create --role node --shard "
                f"{self._shard}` on the server), or run against an --insecure server with --insecure"
            )
        if self._trust_bundle is None:
            raise SidecarError(
                "the first certificate needs --trust-bundle: the xds_server's CA certificate "
                "(ca.crt in the server's CA dir, <data-dir>/ca/), to check the server with"
            )
        attempts = 0
        while True:
            try:
                return await self.keeper.refresh()
            except grpc.aio.AioRpcError as e:
                if e.code() not in _UNREACHABLE:
                    raise SidecarError(f"the xds_server refused this host's first certificate: "
                                       f"{e.code().name}: {e.details()}") from None
                attempts += 1
                delay = jittered(backoff_delay(attempts, 0.25, FIRST_RETRY_MAX_S))
                # Not yet up (or not reachable): the token is not spent, so wait and retry.
                self._log.warning("join_server_unreachable", server=self._join_server,
                                  error=e.code().name, retry_in=round(delay, 2))
                await asyncio.sleep(delay)

    async def _sign(self, csr_pem: bytes) -> Signed:
        current = self.keeper.current
        token = ""
        if current is not None and current.not_after > _now():
            target, creds = self._server, channel_credentials(current)
        else:
            if not self._join_token or self._trust_bundle is None:
                raise SidecarError("the certificate expired and the join token is spent: give a new "
                                   "--join-token-file and restart")
            target, token = self._join_server, self._join_token
            creds = grpc.ssl_channel_credentials(self._trust_bundle)
        request = gateway_pb2.SignRequest(shard=self._shard, node_id=self._node, csr_pem=csr_pem, join_token=token)
        target, options = channel_target(target, self._server_name)
        async with grpc.aio.secure_channel(target, creds, options=options) as channel:
            stub = gateway_pb2_grpc.GatewayStub(channel)  # type: ignore[no-untyped-call]
            response = await stub.SignCertificate(request, timeout=self._timeout)
        if token:
            self._join_token = None  # one-time: spent
        return Signed(response.certificate_chain_pem, response.trust_bundle_pem)

    async def run(self, stop: asyncio.Event) -> None:
        await self.keeper.run(stop)


class FilesIdentity:
    """The ``files`` source: certificate, key and bundle on disk, re-read on change."""

    def __init__(self, cert: Path, key: Path, bundle: Path, log: EventLog) -> None:
        self._paths = {"--tls-cert": cert, "--tls-key": key, "--tls-bundle": bundle}
        # watchfiles reports absolute paths; a rename into place counts as a change.
        self._watched = {os.path.abspath(p) for p in self._paths.values()}
        self._dirs = sorted({os.path.dirname(p) for p in self._watched})
        self._log = log
        self._subscribers: list[Subscriber] = []
        self.current: Credentials | None = None

    def subscribe(self, subscriber: Subscriber) -> None:
        self._subscribers.append(subscriber)

    def load(self) -> Credentials:
        try:
            creds = read_credentials(*self._paths.items())
        except ValueError as e:
            raise SidecarError(str(e)) from None
        self.current = creds
        return creds

    async def first(self) -> Credentials:
        creds = self.load()
        self._log.info("certificate_loaded", source="files", serial=f"{creds.serial:x}",
                       not_after=creds.not_after.isoformat())
        return creds

    async def run(self, stop: asyncio.Event) -> None:
        async for changes in watchfiles.awatch(*self._dirs, stop_event=stop, debounce=200):
            if not any(path in self._watched for _, path in changes):
                continue
            try:
                creds = self.load()
            except SidecarError as e:  # a half-written set: keep serving the last good one
                self._log.warning("certificate_files_unusable", error=str(e))
                continue
            self._log.info("certificate_reloaded", source="files", serial=f"{creds.serial:x}")
            for subscriber in self._subscribers:
                subscriber(creds)


HostIdentity = SignedIdentity | FilesIdentity
