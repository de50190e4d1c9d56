"""``dgw up``: the embedded default — xds_server + sidecar + Envoy + DALs on one host.

One process, one asyncio loop: the control plane serves the shards of a config dir
(the demo shard by default) and a sidecar per shard runs its DALs (Docker containers
when an engine answers and has the images, local processes otherwise) and Envoy, all
on loopback. "Data Gateway is up" is printed once a request would succeed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import logging
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sidecar.log import EventLog
from xds_server.settings import DEFAULT_ADMIN, DEFAULT_XDS, ServerSettings

from .daemon import BACKGROUND_ENV

if TYPE_CHECKING:  # the running parts load only when `dgw up` runs: `dgw --help` stays quick
    from xds_server.server import XdsServer

    from .ready import NotServing

DEMO_DIR = Path(__file__).resolve().parents[1] / "deploy" / "demo" / "shards"
DEFAULT_ENVOY_ADMIN_PORT = 9901
DEFAULT_STATE_DIR = Path(".work/up")
UP_SERVER_DIR = "server"
# How long to wait for "serving" before saying what is still missing (and waiting on).
PATIENCE_S = 30.0
STOP_TIMEOUT_S = 15.0
# The embedded sidecars use their join tokens within seconds of getting them.
JOIN_TOKEN_TTL = dt.timedelta(minutes=10)

log = EventLog("dgw.up")


class UpError(Exception):
    """``dgw up`` cannot serve; the message says what to change."""


def _port(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port (1-65535)")
    return int(text)


def add_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "up", help="run xds_server + sidecar + Envoy + sample DALs on this host",
        description="Run the embedded gateway on loopback: the control plane serves the "
                    "shards of --config-dir, and one sidecar per shard runs its DALs and an "
                    "Envoy. Prints 'Data Gateway is up' once a request would succeed; "
                    "Ctrl-C (or SIGTERM) stops everything it started.",
    )
    p.add_argument("--config-dir", type=Path, default=DEMO_DIR,
                   help="shard files to serve, one shard per DIR/<shard>.yaml (default: the demo shard)")
    p.add_argument("--xds", default=DEFAULT_XDS,
                   help="HOST:PORT of the control plane's gRPC (xDS for Envoy, the sidecar API); "
                        "port 0 picks a free one (default: %(default)s)")
    p.add_argument("--admin", default=DEFAULT_ADMIN,
                   help="HOST:PORT of the control plane's admin HTTP API (/v1/shards, /v1/nodes); "
                        "port 0 picks a free one (default: %(default)s)")
    p.add_argument("--runtime", choices=["auto", "docker", "process"], default="auto",
                   help="where DALs run: auto (default) uses Docker when an engine answers and "
                        "has the DAL images, else local processes, and logs why")
    p.add_argument("--node-id", default="local-1",
                   help="this host's node id: Envoy's node.id and the sidecar's (default: %(default)s)")
    p.add_argument("--envoy-admin-port", type=_port, default=DEFAULT_ENVOY_ADMIN_PORT,
                   help="Envoy's admin port on 127.0.0.1 for the first shard, +1 for each next "
                        "one (default: %(default)s)")
    p.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR,
                   help="where Envoy's bootstrap, the DALs' logs and process records live "
                        "(default: %(default)s)")
    p.add_argument("-d", "--detach", action="store_true",
                   help="run in the background and return once it serves; `dgw logs` shows "
                        "its logs, `dgw down` stops it")
    p.set_defaults(func=run)


def forget_cached_configs(state_dir: Path) -> None:
    """The sidecar keeps the last config it got so that it can serve while its server
    is away. An embedded run brings its own server: an earlier run's copy is stale
    (its ports may have changed since) and must not be applied first."""
    from sidecar.config_follower import CACHE_FILE

    for path in state_dir.glob(f"*/{CACHE_FILE}"):
        path.unlink(missing_ok=True)


class _AgentRuntimeLine(logging.Filter):
    """``dgw up`` chose the runtime and logged why; the agent, told which one, would
    log ``reason=requested`` although the user asked for nothing."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("event=runtime_selected")


async def _start_server(args: argparse.Namespace) -> tuple[XdsServer, list[str], dict[str, int]]:
    """The control plane, started, with its shards and their Envoy admin ports; or
    UpError when a port is taken or no shard is usable (nothing left running)."""
    from xds_server.server import XdsServer

    from . import preflight

    busy = preflight.busy_server_ports({"--xds": args.xds, "--admin": args.admin})
    if busy:
        raise UpError("\n".join(busy))
    # The server's data (config store, tokens, CA, the first start's admin.token) beside
    # the sidecars' state: `dgw get`/`dgw status` run from the same directory find the
    # token. The join port is only for this process's own sidecars, who are told where.
    server = XdsServer(ServerSettings(config_dir=args.config_dir, xds=args.xds, admin=args.admin,
                                      data_dir=args.state_dir / UP_SERVER_DIR, join="127.0.0.1:0"))
    await server.start()
    shards = sorted(server.registry.shards)
    admin_ports = {shard: args.envoy_admin_port + i for i, shard in enumerate(shards)}
    if not shards:
        rejected = [e for r in server.registry.rejections.values() for e in r.errors]
        problems = [f"no usable shard in {args.config_dir}", *rejected]
    else:
        configs = {s: (server.registry.shards[s].config, server.registry.shards[s].source) for s in shards}
        problems = preflight.busy_ports(configs, admin_ports, server.settings.public_address)
    if problems:
        await server.stop()
        raise UpError("\n".join(problems))
    return server, shards, admin_ports


async def _up(args: argparse.Namespace) -> None:
    from sidecar.config import SidecarSettings
    from sidecar.main import run_sidecar
    from sidecar.ports import PortClaims

    from .runtime_choice import RuntimeChoice, choose_runtime

    # DAL commands like `python3 -m dals.kv serve` must find this installation's Python.
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    forget_cached_configs(args.state_dir)
    if args.config_dir.resolve() == DEMO_DIR:
        from .demo_storage import prepare

        storage = await prepare(str(args.state_dir.absolute()))
        log.info("demo_storage", dal="cql", engine=storage.engine, reason=storage.reason)
    server, shards, admin_ports = await _start_server(args)

    if args.runtime == "auto":
        choice = choose_runtime([server.registry.shards[s].config for s in shards])
    else:
        choice = RuntimeChoice(args.runtime, "requested")
    log.info("runtime_selected", runtime=choice.runtime, reason=choice.reason)
    agent_log = logging.getLogger("dgw.sidecar")
    quiet_agent = _AgentRuntimeLine()
    agent_log.addFilter(quiet_agent)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    xds = f"{args.xds.rpartition(':')[0]}:{server.xds_port}"
    agents = []
    claims = PortClaims()
    for shard in shards:
        settings = SidecarSettings(
            server=xds, shard=shard, node_id=args.node_id, runtime=choice.runtime,
            state_dir=args.state_dir, envoy_admin_port=admin_ports[shard],
            stop_dals_on_exit=True, **_join(server, shard, args.state_dir),
        )
        agents.append(asyncio.create_task(run_sidecar(settings, stop, claims), name=f"sidecar-{shard}"))
    stopping = asyncio.create_task(stop.wait())
    serving = asyncio.create_task(_serving(server, shards, args.node_id, admin_ports))
    try:
        await _first(serving, stopping, agents)
        if serving.done():
            _banner(server, shards, args)
            await _first(stopping, stopping, agents)
    finally:
        stop.set()
        serving.cancel()
        for task in agents:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(task, STOP_TIMEOUT_S)
        agent_log.removeFilter(quiet_agent)
        for token_file in args.state_dir.glob("join-*.token"):  # spent, but no need to keep
            token_file.unlink(missing_ok=True)
        await server.stop()


def _join(server: XdsServer, shard: str, state_dir: Path) -> dict[str, Any]:
    """What the embedded sidecar of ``shard`` needs for its first certificate: a fresh
    one-time join token in a 0600 file (never on a command line or in the log), where
    the join port is, and the CA to check the server against."""
    from common.files import write_private

    token_file = (state_dir / f"join-{shard}.token").absolute()
    write_private(token_file, server.create_join_token(shard, JOIN_TOKEN_TTL).encode())
    return {
        "join_token_file": token_file,
        "join_server": f"127.0.0.1:{server.join_port}",
        "trust_bundle": server.settings.ca_directory() / "ca.crt",
    }


async def _first(
    watched: asyncio.Task[Any], stopping: asyncio.Task[Any], agents: list[asyncio.Task[None]]
) -> None:
    """Wait for ``watched``, a stop request or an agent's end, whichever comes first;
    an agent that failed, or a failed ``watched``, raises here."""
    done, _ = await asyncio.wait({watched, stopping, *agents}, return_when=asyncio.FIRST_COMPLETED)
    for task in done:
        error = None if task is stopping else task.exception()
        if error is not None:
            raise error


async def _serving(server: XdsServer, shards: list[str], node_id: str, admin_ports: dict[str, int]) -> None:
    for shard in shards:
        await _shard_serving(server, shard, node_id, admin_ports[shard])


async def _shard_serving(server: XdsServer, shard: str, node_id: str, admin_port: int) -> None:
    from . import ready
    def slow(waits: list[str]) -> None:
        print(f"dgw up: shard {shard} not serving yet, still waiting: {'; '.join(waits)}",
              file=sys.stderr, flush=True)

    try:
        await ready.wait_serving(
            lambda: server.registry.shards[shard].ir,
            f"127.0.0.1:{admin_port}",
            lambda: [s for s in server.cache.node_status() if s.shard == shard and s.node_id == node_id],
            PATIENCE_S,
            slow,
        )
    except ready.NotServing as e:
        raise UpError(_explain(server, shard, e)) from None


def _explain(server: XdsServer, shard: str, error: NotServing) -> str:
    """Envoy's refusal, plus what to change when it is a public port."""
    from . import preflight

    state = server.registry.shards[shard]
    for name, listener in state.config.proxy_config.public_listeners.items():
        if error.port is not None and listener.address.port == error.port:
            return (f"{error} (listener {shard}.{name}): "
                    f"{preflight.advice(state.source, name, error.port, server.settings.public_address)}")
    return str(error)


def _banner(server: XdsServer, shards: list[str], args: argparse.Namespace) -> None:
    admin = f"http://127.0.0.1:{server.admin_port}"
    lines = [f"Data Gateway is up (shards: {', '.join(shards)}). Try:"]
    for shard in shards:
        for name, listener in server.registry.shards[shard].config.proxy_config.public_listeners.items():
            where = listener.address
            secured = ", mTLS: a client certificate from `dgw ca issue --identity ACCOUNT-APP`" if listener.tls_creds else ""
            if where.port and listener.mode == "http" and not secured:
                lines.append(f"  curl -s http://127.0.0.1:{where.port}/      # {shard}.{name} through Envoy")
            elif where.port:
                lines.append(f"  127.0.0.1:{where.port}  ({listener.mode}, {shard}.{name}{secured})")
        lines.append(f"  dgw get shard {shard}")
    lines += ["  dgw status                                  # every Envoy: SYNCED / STALE / NACKED",
              f"  (the admin API, {admin}, needs a token: {server.admin_token_path})",
              f"Edit {args.config_dir}/*.yaml to rewire live; "
              + ("`dgw down` stops everything." if os.environ.get(BACKGROUND_ENV) else "Ctrl-C stops everything.")]
    print("\n".join(lines), flush=True)


def run(args: argparse.Namespace) -> int:
    from sidecar.errors import SidecarError

    if args.detach:
        from .daemon import detach

        return detach(args, [a for a in sys.argv[1:] if a not in ("-d", "--detach")])

    try:
        asyncio.run(_up(args))
    except UpError as e:
        for line in str(e).splitlines():
            print(f"dgw up: {line}", file=sys.stderr)
        return 1
    except (SidecarError, OSError, ValueError) as e:
        print(f"dgw up: {e}", file=sys.stderr)
        return 1
    return 0
