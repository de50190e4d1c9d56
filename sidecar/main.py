"""Wire the agent together and run it until SIGTERM/SIGINT.

``run_sidecar(settings)`` is the entry point (``dgw sidecar`` calls it from
``cli.run``, ``dgw up`` once per shard): get the host's certificate and serve it on
the local SDS (``host_secrets``; not with ``--insecure``), pick the runtime, start
Envoy, follow the xds_server, reconcile.
"""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

from envoy_proxy import EnvoyNotFound, admin_socket, make_bootstrap

from . import state_dir as state_dir_module
from .agent import Agent
from .config import SidecarSettings
from .control import ControlClient
from .envoy_supervisor import EnvoySupervisor
from .errors import SidecarError
from .host_secrets import HostSecrets
from .log import EventLog
from .ports import PortClaims
from .runtimes.base import Runtime, RuntimeUnavailable
from .runtimes.docker import DockerRuntime, connect
from .runtimes.process import ProcessRuntime
from .runtimes.run_as import RunAsError, resolve


def envoy_admin_socket(settings: SidecarSettings) -> Path:
    """Where the sidecar's Envoy has its admin (owner-only, in the node's state dir):
    the sidecar and ``dgw`` on the same host ask it there."""
    return admin_socket(settings.node_dir)


async def select_runtime(settings: SidecarSettings, state_dir: Path, log: EventLog) -> Runtime:
    """Docker when asked for or reachable; the process runtime otherwise."""
    try:
        run_as = resolve(settings.dal_user) if settings.dal_user is not None else None
    except RunAsError as e:
        raise SidecarError(str(e)) from None
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
                user=run_as.docker_user if run_as else None,
            )
    else:
        log.info("runtime_selected", runtime="process", reason="requested")
    if run_as is None and os.geteuid() == 0:
        # Said plainly: a shard's container_cmd is then a command run as root on this host.
        log.warning("dals_run_as_root", runtime="process",
                    hint="DALs run as root, and so does any container_cmd a shard file names: "
                         "give --dal-user (e.g. nobody)")  # fmt: skip
    return ProcessRuntime(state_dir, stop_grace_s=settings.stop_grace_s, log=log, run_as=run_as)


async def run_sidecar(
    settings: SidecarSettings,
    stop: asyncio.Event | None = None,
    claims: PortClaims | None = None,
) -> None:
    """Run the agent until ``stop`` is set, or SIGTERM/SIGINT when none is given.

    claims: shared by every agent of this process (``dgw up`` runs one per shard)."""
    log = EventLog("dgw.sidecar", shard=settings.shard, node=settings.node_id)
    state_dir = settings.node_dir
    state_dir_module.prepare(settings.state_dir, state_dir)  # refused unless only we can write it
    log.info("starting", server=settings.server, state_dir=str(state_dir))
    # The first certificate before anything else: Envoy's first xDS connection is mTLS.
    secrets = None if settings.insecure else await HostSecrets.start(
        settings, state_dir, log.bind(component="identity")
    )
    try:
        runtime = await select_runtime(settings, state_dir, log)
    except BaseException:
        if secrets is not None:
            await secrets.close()
        raise
    envoy: EnvoySupervisor | None = None
    if settings.envoy:
        try:
            envoy = EnvoySupervisor(
                bootstrap=make_bootstrap(
                    settings.shard, settings.node_id, settings.server, settings.delta_xds,
                    sds_socket=secrets.sds_socket if secrets else None, xds_tls=secrets is not None,
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
            if secrets is not None:
                await secrets.close()
            raise SidecarError(str(e)) from None
    control = ControlClient(
        settings.server,
        shard=settings.shard,
        node_id=settings.node_id,
        reconnect_base_s=settings.reconnect_base_s,
        reconnect_max_s=settings.reconnect_max_s,
        rpc_timeout_s=settings.rpc_timeout_s,
        log=log,
        credentials=secrets.channel_credentials() if secrets else None,
        server_name=settings.server_name,
    )
    if secrets is not None:
        secrets.follow(control)
    agent = Agent(settings, runtime, control, envoy, state_dir, log, claims or PortClaims(),
                  on_config=secrets.config_changed if secrets else lambda _: None)

    own_stop = stop is None
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    if own_stop:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
    keeping = (
        asyncio.create_task(secrets.run(stop), name="identity") if secrets is not None else None
    )
    try:
        await agent.run(stop)
    finally:
        if keeping is not None:
            keeping.cancel()
            await asyncio.gather(keeping, return_exceptions=True)
        if secrets is not None:
            await secrets.close()
        if own_stop:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
