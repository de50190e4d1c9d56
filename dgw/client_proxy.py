"""``dgw client-proxy``: the application side of a secured gateway (the seed's Secure RDS).

An application (``psql``, a gRPC or HTTP client) speaks plaintext to this proxy on
loopback; the proxy is an Envoy, configured by the xds_server, that finds the shard's
healthy gateways through their registrations (EDS ``ADDRESS/LISTENER``), originates mTLS
with the application's identity and passes the bytes through. It accepts only a gateway
that presents ``spiffe://TD/gateway/SHARD``.

The application's certificate and key reach that Envoy the way a gateway's do: over SDS
from a Unix socket this process serves (0600), never through a file Envoy reads. With
``--identity CERT KEY`` the files are re-read when they change (a renewed certificate is
used for new connections at once, open ones stay). With ``--join TOKEN`` the key is made
here and the CA signs a CSR through ``dgw.v1.Gateway.SignCertificate``; it is renewed at
half its lifetime over mTLS with the current certificate.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.x509.oid import NameOID

from envoy_proxy import EnvoyProcess, UpstreamTls, make_client_bootstrap
from sidecar.host_identity import read_credentials
from sidecar.identity import Credentials, IdentityKeeper, Signed
from sidecar.sds import LocalSds
from xds_server.security.identity import DEFAULT_TRUST_DOMAIN, SpiffeId, gateway_id
from xds_server.security.providers import certificate_secret, trust_bundle_secret
from xds_server.translate import DISCOVERY_SHARD

log = logging.getLogger("dgw.client_proxy")

# The SDS names under which this process serves the application's credentials.
TLS_PROVIDER = "client"
READY_TIMEOUT_S = 30.0
FILE_POLL_S = 1.0
SIGN_TIMEOUT_S = 10.0
# While it waits to serve: how often it looks, and how often it says what it awaits.
WAIT_POLL_S = 0.25
PROGRESS_EVERY_S = 5.0
# The bootstrap's clusters: the xds_server, and the shard's gateways (EDS ADDRESS/LISTENER).
_XDS_CLUSTER = "dgw_xds"
_GATEWAY_CLUSTER = "gateway"
_STATS = (r"^(control_plane\.connected_state|cluster\.(dgw_xds|gateway)\.(upstream_cx_connect_fail"
          r"|ssl\.(connection_error|fail_verify_error|fail_verify_san)|membership_healthy))$")


class ClientProxyError(Exception):
    """The proxy cannot start; the message names the flag or file and what to do."""


@dataclass(frozen=True)
class Options:
    shard: str
    listener: str
    address: str
    listen: str
    xds: str
    node_id: str
    delta: bool
    identity: tuple[Path, Path] | None
    ca: Path | None
    join: str | None
    state_dir: Path | None
    insecure: bool = False  # the xds_server is plaintext (dgw server --insecure)
    join_server: str | None = None  # the server's join port (--join): the first certificate
    ready_timeout_s: float = READY_TIMEOUT_S  # give up when not serving after this long
    context: str | None = None  # the context the defaults came from (named in errors)


# --- credentials ------------------------------------------------------------------------


def trust_domain_of(chain_pem: bytes) -> str:
    """The trust domain of the leaf's SPIFFE ID: the gateways are in the same one."""
    leaf = x509.load_pem_x509_certificate(chain_pem)
    try:
        sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return DEFAULT_TRUST_DOMAIN
    for uri in sans.get_values_for_type(x509.UniformResourceIdentifier):
        if uri.startswith("spiffe://"):
            return uri.removeprefix("spiffe://").split("/", 1)[0]
    return DEFAULT_TRUST_DOMAIN


class IdentityFiles:
    """``--identity CERT KEY`` and ``--ca BUNDLE``: read, checked, re-read when changed."""

    def __init__(self, cert: Path, key: Path, bundle: Path) -> None:
        self.paths = {"--identity CERT": cert, "--identity KEY": key, "--ca": bundle}
        self._stamp: tuple[tuple[int, int], ...] = ()

    def _stamps(self) -> tuple[tuple[int, int], ...]:
        out = []
        for path in self.paths.values():
            st = path.stat()
            out.append((st.st_mtime_ns, st.st_size))
        return tuple(out)

    def load(self) -> Credentials:
        """The credentials now on disk; ClientProxyError naming the flag if unusable."""
        try:
            creds = read_credentials(*self.paths.items())
        except ValueError as e:
            raise ClientProxyError(str(e)) from None
        self._stamp = self._stamps()
        return creds

    def changed(self) -> bool:
        try:
            return self._stamps() != self._stamp
        except OSError:
            return False  # mid-replacement: look again at the next poll




def join_signer(
    xds: str, shard: str, node_id: str, token: str, current: Callable[[], Credentials | None],
    bundle_pem: bytes | None = None, join_server: str | None = None,
) -> Callable[[bytes], Awaitable[Signed]]:
    """A signer for ``IdentityKeeper``: the first CSR goes with the one-time join token
    to the server's join port (TLS checked against ``bundle_pem`` when given), the next
    ones over mTLS with the current certificate (empty token) to ``xds``."""
    from dgw_api.v1 import gateway_pb2, gateway_pb2_grpc

    first = join_server or xds

    async def sign(csr_pem: bytes) -> Signed:
        held = current()
        if held is None:
            channel = (
                grpc.aio.secure_channel(first, grpc.ssl_channel_credentials(bundle_pem)) if bundle_pem
                else grpc.aio.insecure_channel(first)
            )
            request = gateway_pb2.SignRequest(shard=shard, node_id=node_id, csr_pem=csr_pem, join_token=token)
        else:
            creds = grpc.ssl_channel_credentials(held.bundle_pem, held.key_pem, held.chain_pem)
            channel = grpc.aio.secure_channel(xds, creds)
            request = gateway_pb2.SignRequest(shard=shard, node_id=node_id, csr_pem=csr_pem)
        # The address this call dials, as the user named it: --join-server the first
        # time (with the token), --xds for a renewal.
        dialled = f"--join-server {first}" if held is None else f"--xds {xds}"
        async with channel:
            try:
                stub = gateway_pb2_grpc.GatewayStub(channel)  # type: ignore[no-untyped-call]
                response = await stub.SignCertificate(request, timeout=SIGN_TIMEOUT_S)
            except grpc.aio.AioRpcError as e:
                if e.code() == grpc.StatusCode.UNIMPLEMENTED:
                    raise ClientProxyError(
                        f"the server at {dialled} does not sign certificates (SignCertificate is not "
                        "implemented there): use --identity CERT KEY (see `dgw ca issue`)"
                    ) from None
                if e.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    raise ClientProxyError(
                        f"--join: no server answers at {dialled} ({e.details()}); is it running, and is "
                        "that its join port? (`dgw up` shows it, and its context holds it)"
                    ) from None
                raise ClientProxyError(f"--join: the server at {dialled} refused: {e.details()}") from None
        return Signed(chain_pem=response.certificate_chain_pem, bundle_pem=response.trust_bundle_pem)

    return sign


# --- waiting to serve ---------------------------------------------------------------------


@dataclass(frozen=True)
class ProxyView:
    """What one look at the proxy's Envoy saw."""

    live: bool  # /ready says LIVE
    connected: bool  # its xDS stream to the xds_server is up
    connect_failures: int  # TCP connections to the xds_server that failed
    tls_failures: int  # TLS handshakes with the xds_server that failed, verification aside
    unverified: int  # its certificate was not vouched for by our bundle (or not the server's name)
    gateways: int  # healthy gateways it may forward to


def pending(view: ProxyView, options: Options, bundle: str) -> list[str]:
    """What still stands between the application and a gateway; empty when serving.
    ``bundle``: the CA file the server is checked with."""
    context = f", context {options.context}" if options.context else ""
    if not view.connected:
        if view.unverified:
            return [f"the xds_server at --xds {options.xds}: its certificate is not vouched for by {bundle} "
                    f"({view.unverified} TLS verifications failed{context}): is the identity from that "
                    "server's CA (`dgw ca issue` in its context)?"]
        if view.tls_failures:
            return [f"a TLS handshake with the xds_server at --xds {options.xds}: {view.tls_failures} failed "
                    f"(CA {bundle}{context}): does the server accept this identity?"]
        if view.connect_failures:
            return [f"the xds_server at --xds {options.xds}: nothing answers there "
                    f"({view.connect_failures} connections failed; is it running, and is that its xDS port?)"]
        return [f"a connection to the xds_server at --xds {options.xds}"]
    waits = []
    if view.gateways == 0:
        waits.append(f"a healthy gateway of shard {options.shard} registered under {options.address} for "
                     f"listener {options.listener} (none yet: is the shard up, and does its registrations "
                     f"list {options.address}?)")
    if not waits and not view.live:
        waits.append("Envoy's first config")
    return waits


async def observe(envoy: EnvoyProcess) -> ProxyView:
    from envoy_proxy import AdminUnavailable

    try:
        stats = await envoy.admin.stats(_STATS)
        live = await envoy.admin.ready()
    except AdminUnavailable:
        return ProxyView(False, False, 0, 0, 0, 0)
    ssl = f"cluster.{_XDS_CLUSTER}.ssl"
    return ProxyView(
        live=live,
        connected=stats.number("control_plane.connected_state") == 1,
        connect_failures=stats.number(f"cluster.{_XDS_CLUSTER}.upstream_cx_connect_fail"),
        tls_failures=stats.number(f"{ssl}.connection_error"),
        unverified=stats.number(f"{ssl}.fail_verify_error") + stats.number(f"{ssl}.fail_verify_san"),
        gateways=stats.number(f"cluster.{_GATEWAY_CLUSTER}.membership_healthy"),
    )


async def wait_serving(envoy: EnvoyProcess, options: Options, bundle: str, stop: asyncio.Event,
                       say: Callable[[str], None]) -> bool:  # fmt: skip
    """Until the proxy can forward a connection (True), or ``stop`` is set (False).
    Says what it awaits every PROGRESS_EVERY_S; raises ClientProxyError with the
    reasons after ``options.ready_timeout_s``, or when Envoy ends."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    next_note = started + PROGRESS_EVERY_S
    while not stop.is_set():
        if not envoy.running:
            raise ClientProxyError(f"envoy {envoy.exit_text()}; its log: {envoy.log_path}")
        waits = pending(await observe(envoy), options, bundle)
        if not waits:
            return True
        now = loop.time()
        if now - started >= options.ready_timeout_s:
            raise ClientProxyError(f"not serving after {options.ready_timeout_s:g} s (--ready-timeout); "
                                   f"still waiting for: {'; '.join(waits)}")  # fmt: skip
        if now >= next_note:
            say(f"client proxy: waiting ({now - started:.0f} s) for: {'; '.join(waits)}")
            next_note = now + PROGRESS_EVERY_S
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), WAIT_POLL_S)
    return False


async def _unless_stopped(work: Awaitable[Credentials], stop: asyncio.Event) -> Credentials | None:
    """``work``'s result, or None as soon as ``stop`` is set (``work`` is cancelled)."""
    task = asyncio.ensure_future(work)
    stopped = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
    if task.done():
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task
    return None


# --- the proxy --------------------------------------------------------------------------


def _bundle_trust_domain(bundle_pem: bytes) -> str:
    """The trust domain a CA of ours names in its subject (O=TRUST_DOMAIN)."""
    try:
        ca = x509.load_pem_x509_certificates(bundle_pem)[0]
    except ValueError:
        raise ClientProxyError("--ca is not a PEM certificate bundle") from None
    orgs = ca.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    return str(orgs[0].value) if orgs else DEFAULT_TRUST_DOMAIN


def _read(path: Path, flag: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise ClientProxyError(f"{flag} {path}: {e.strerror or e}") from None


def _short_state_dir() -> Path:
    """A private scratch directory with a short path (a Unix socket path is ≤ 107 bytes)."""
    return Path(tempfile.mkdtemp(prefix="dgw-cp-", dir="/tmp" if os.path.isdir("/tmp") else None))


def bootstrap(options: Options, sds_socket: Path, trust_domain: str) -> dict[str, object]:
    gateway: SpiffeId = gateway_id(options.shard, trust_domain)
    tls = UpstreamTls(
        sds_socket=str(sds_socket),
        gateway_san=gateway.uri,
        certificate=certificate_secret(TLS_PROVIDER),
        trust_bundle=trust_bundle_secret(TLS_PROVIDER),
        sni=options.address,
    )
    return make_client_bootstrap(
        options.node_id, options.xds, f"{options.address}/{options.listener}", options.listen,
        options.delta, tls=tls, xds_tls=not options.insecure,
    )  # fmt: skip


async def run(options: Options, stop: asyncio.Event, on_ready: Callable[[str], None] = print,
              say: Callable[[str], None] = log.info) -> int:  # fmt: skip
    """Serve until ``stop`` is set (or Envoy ends); the exit code (130: stopped before
    it served). ``say`` hears what it waits for while it is not serving yet."""
    owned = options.state_dir is None
    state = options.state_dir or _short_state_dir()
    state.mkdir(parents=True, exist_ok=True, mode=0o700)
    sds = LocalSds(state / "sds.sock", DISCOVERY_SHARD)
    envoy: EnvoyProcess | None = None
    tasks: list[asyncio.Task[None]] = []
    try:
        # Envoy is started before anything of gRPC runs in this process (the SDS server,
        # the signing channel): forking while gRPC's pollers run can crash them. Envoy
        # retries the SDS socket until it answers, moments later.
        files: IdentityFiles | None = None
        creds: Credentials | None = None
        if options.identity is not None:
            cert, key = options.identity
            bundle = options.ca or cert.parent / "bundle.pem"
            if options.ca is None and not bundle.exists():
                raise ClientProxyError(f"--ca: give the CA bundle (no {bundle} beside --identity CERT)")
            files = IdentityFiles(cert, key, bundle)
            creds = files.load()
            trust_domain = trust_domain_of(creds.chain_pem)
            trust_file = str(bundle)
        elif options.join is not None:
            trust_file = str(options.ca) if options.ca else "the bundle the server returned"
            bundle_pem = _read(options.ca, "--ca") if options.ca else None
            trust_domain = _bundle_trust_domain(bundle_pem) if bundle_pem else DEFAULT_TRUST_DOMAIN
        else:
            raise ClientProxyError("give --identity CERT KEY (see `dgw ca issue`) or --join TOKEN")
        envoy = EnvoyProcess(bootstrap(options, sds.socket_path, trust_domain), state,
                             name="client-proxy-envoy", concurrency=1)  # fmt: skip
        await envoy.start()
        await sds.start()
        if creds is None:
            # --join: the CA decides the identity it grants; the CSR's is only a request.
            held: list[Credentials] = []

            def on_new(new: Credentials) -> None:
                held[:] = [new]
                sds.serve([TLS_PROVIDER], new)

            sign = join_signer(options.xds, options.shard, options.node_id, options.join or "",
                               lambda: held[0] if held else None, bundle_pem,
                               options.join_server)  # fmt: skip
            keeper = IdentityKeeper(None, sign, on_new)  # the token names the consumer
            creds = await _unless_stopped(keeper.refresh(), stop)
            if creds is None:
                return 130
            tasks.append(asyncio.create_task(keeper.run(stop)))
        sds.serve([TLS_PROVIDER], creds)
        if files is not None:
            tasks.append(asyncio.create_task(follow_files(files, sds, [TLS_PROVIDER], stop)))
        if not await wait_serving(envoy, options, trust_file, stop, say):
            return 130
        on_ready(
            f"client proxy: {options.listen} → {options.address}/{options.listener} "
            f"(gateways spiffe://{trust_domain}/gateway/{options.shard}), "
            f"serial {creds.serial:x}, expires {creds.not_after.isoformat()}"
        )
        log.info("event=client_proxy_ready listen=%s target=%s/%s envoy_pid=%d admin=%s",
                 options.listen, options.address, options.listener, envoy.pid, envoy.admin_address)  # fmt: skip
        exited = asyncio.create_task(envoy.wait())
        stopped = asyncio.create_task(stop.wait())
        await asyncio.wait({exited, stopped}, return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        if exited.done():
            raise ClientProxyError(f"envoy {envoy.exit_text()}; its log: {envoy.log_path}")
        exited.cancel()
        return 0
    finally:
        stop.set()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if envoy is not None:
            await envoy.stop()
        await sds.stop()
        if owned:
            shutil.rmtree(state, ignore_errors=True)


async def follow_files(files: IdentityFiles, sds: LocalSds, providers: list[str], stop: asyncio.Event) -> None:
    """Serve the files again under ``providers`` whenever they change (a renewal written
    by another tool), until ``stop`` is set."""
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), FILE_POLL_S)
        if stop.is_set() or not files.changed():
            continue
        try:
            creds = files.load()
        except ClientProxyError as e:
            log.warning("event=identity_reload_failed error=%s (the previous certificate stays)", e)
            continue
        sds.serve(providers, creds)
        log.info("event=identity_reloaded serial=%x not_after=%s", creds.serial, creds.not_after.isoformat())


async def serve_until_signalled(options: Options) -> int:
    """``run`` in the foreground: SIGTERM or SIGINT stops it (and its Envoy)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return await run(options, stop, on_ready=lambda text: print(text, flush=True),
                     say=lambda text: print(text, file=sys.stderr, flush=True))
