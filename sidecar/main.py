"""Wire the agent together and run it until SIGTERM/SIGINT.

``run_sidecar(settings)`` is the entry point (``dgw sidecar`` calls it from
``cli.run``, ``dgw up`` once per shard): pick the runtime, start Envoy, follow the
xds_server, reconcile.
"""

from __future__ import annotations

import asyncio
import re
import signal
from pathlib import Path

from envoy_proxy import EnvoyNotFound, make_bootstrap
from xds_server.config import RuntimeConfig
from xds_server.security.identity import IdentityError, gateway_id

from .agent import Agent
from .config import SidecarSettings
from .control import ControlClient
from .envoy_supervisor import EnvoySupervisor
from .errors import SidecarError
from .host_identity import FilesIdentity, HostIdentity, SignedIdentity, channel_credentials
from .identity import Credentials
from .log import EventLog
from .ports import PortClaims
from .runtimes.base import Runtime, RuntimeUnavailable
from .runtimes.docker import DockerRuntime, connect
from .runtimes.process import ProcessRuntime
from .sds import LocalSds, SdsError

SDS_SOCKET = "sds.sock"
IDENTITY_DIR = "identity"

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


async def select_runtime(settings: SidecarSettings, state_dir: Path, log: EventLog) -> Runtime:
    """Docker when asked for or reachable; the process runtime otherwise."""
    if settings.runtime in ("auto", "docker"):
        try:
            client = await asyncio.to_thread(connect)
        except RuntimeUnavailable as e:
            if settings.runtime == "docker":
                raise SidecarError(
                    f"--runtime docker: {e}; start the engine (deploy/docker/start-engine.sh) "
                    "or use --runtime process"
                ) from None
            log.info("runtime_selected", runtime="process", reason=str(e))
        else:
            log.info("runtime_selected", runtime="docker", network_mode=settings.network_mode,
                     reason="requested" if settings.runtime == "docker" else "engine reachable")
            return DockerRuntime(
                client,
                shard=settings.shard,
                node=settings.node_id,
                network_mode=settings.network_mode,
                bind_address=settings.bind_address,
                stop_grace_s=settings.stop_grace_s,
                log=log,
            )
    else:
        log.info("runtime_selected", runtime="process", reason="requested")
    return ProcessRuntime(state_dir, stop_grace_s=settings.stop_grace_s, log=log)


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
        rpc_timeout_s=settings.rpc_timeout_s, log=log,
    )


def tls_providers(config: RuntimeConfig) -> set[str]:
    """The TLS provider names the shard's listeners use: the SDS serves each."""
    return {lst.tls_creds for lst in config.proxy_config.public_listeners.values() if lst.tls_creds}


async def run_sidecar(
    settings: SidecarSettings,
    stop: asyncio.Event | None = None,
    claims: PortClaims | None = None,
) -> None:
    """Run the agent until ``stop`` is set, or SIGTERM/SIGINT when none is given.

    claims: shared by every agent of this process (``dgw up`` runs one per shard)."""
    log = EventLog("dgw.sidecar", shard=settings.shard, node=settings.node_id)
    state_dir = settings.state_dir / _UNSAFE.sub("_", f"{settings.shard}-{settings.node_id}")
    state_dir.mkdir(parents=True, exist_ok=True)
    log.info("starting", server=settings.server, state_dir=str(state_dir))
    identity: HostIdentity | None = None
    sds: LocalSds | None = None
    creds: Credentials | None = None
    if not settings.insecure:
        identity = host_identity(settings, state_dir, log.bind(component="identity"))
        creds = await identity.first()
        try:
            sds = LocalSds((state_dir / SDS_SOCKET).absolute(), settings.shard)
        except SdsError as e:
            raise SidecarError(str(e)) from None
        await sds.start()
        sds.serve((), creds)
    try:
        runtime = await select_runtime(settings, state_dir, log)
    except BaseException:
        if sds is not None:
            await sds.stop()
        raise
    envoy: EnvoySupervisor | None = None
    if settings.envoy:
        try:
            admin = f"127.0.0.1:{settings.envoy_admin_port}"
            envoy = EnvoySupervisor(
                bootstrap=make_bootstrap(
                    settings.shard, settings.node_id, settings.server, admin, settings.delta_xds,
                    sds_socket=str(sds.socket_path) if sds else None, xds_tls=sds is not None,
                    xds_server_id=settings.xds_server_id,
                ),
                state_dir=state_dir,
                binary=settings.envoy_binary,
                log_level=settings.envoy_log_level,
                backoff_max_s=settings.envoy_backoff_max_s,
                crash_log_lines=settings.crash_log_lines,
                log=log.bind(component="envoy"),
            )
        except (EnvoyNotFound, ValueError) as e:
            await runtime.close()
            if sds is not None:
                await sds.stop()
            raise SidecarError(str(e)) from None
    control = ControlClient(
        settings.server,
        shard=settings.shard,
        node_id=settings.node_id,
        reconnect_base_s=settings.reconnect_base_s,
        reconnect_max_s=settings.reconnect_max_s,
        rpc_timeout_s=settings.rpc_timeout_s,
        log=log,
        credentials=channel_credentials(creds) if creds is not None else None,
    )
    providers: set[str] = set()

    def config_changed(config: RuntimeConfig) -> None:
        providers.clear()
        providers.update(tls_providers(config))
        if sds is not None:
            sds.serve(providers)

    def renewed(new: Credentials) -> None:
        if sds is not None:
            sds.serve(providers, new)
        control.rotate(channel_credentials(new))

    if identity is not None:
        identity.subscribe(renewed)
    agent = Agent(settings, runtime, control, envoy, state_dir, log, claims or PortClaims(),
                  on_config=config_changed)

    own_stop = stop is None
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    if own_stop:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
    keeping = (
        asyncio.create_task(identity.run(stop), name="identity") if identity is not None else None
    )
    try:
        await agent.run(stop)
    finally:
        if keeping is not None:
            keeping.cancel()
            await asyncio.gather(keeping, return_exceptions=True)
        if sds is not None:
            await sds.stop()
        if own_stop:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
