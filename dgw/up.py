"""``dgw up``: the embedded default — xds_server + sidecar + Envoy + DALs on one host.

One process, one asyncio loop: the control plane serves the shards of a config dir
(the demo shard by default) and a sidecar per shard runs its DALs (Docker containers
when an engine answers and has the images, local processes otherwise) and Envoy, all
on loopback. "Data Gateway is up" is printed once a request would succeed.

Each run is an instance (``--name``, ``dgw/instances.py``) with its own state dir,
ports, node id and context: the context (``up-NAME``) is written and selected once
the server listens, so ``dgw status`` and friends act on this instance, and removed
when it stops.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import logging
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sidecar.log import EventLog
from xds_server.settings import DEFAULT_ADMIN, DEFAULT_XDS, ServerSettings

from . import instances
from .daemon import BACKGROUND_ENV
from .instances import DEFAULT_NAME, UP_SERVER_DIR, InstanceError

if TYPE_CHECKING:  # the running parts load only when `dgw up` runs: `dgw --help` stays quick
    from sidecar.config import SidecarSettings
    from xds_server.server import XdsServer

    from .ready import NotServing

DEMO_DIR = Path(__file__).resolve().parents[1] / "deploy" / "demo" / "shards"
# How long to wait for "serving" before saying what is still missing (and waiting on).
PATIENCE_S = 30.0
# The embedded sidecars use their join tokens within seconds of getting them.
JOIN_TOKEN_TTL = dt.timedelta(minutes=10)

log = EventLog("dgw.up")


class UpError(Exception):
    """``dgw up`` cannot serve; the message says what to change."""


def add_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "up", help="run xds_server + sidecar + Envoy + sample DALs on this host",
        description="Run the embedded gateway on loopback: the control plane serves the "
                    "shards of --config-dir, and one sidecar per shard runs its DALs and an "
                    "Envoy. Prints 'Data Gateway is up' once a request would succeed; "
                    "Ctrl-C (or SIGTERM) stops everything it started. Each run is an instance "
                    "with its own state dir, ports, context (up-NAME, selected while it runs) "
                    "and containers: `dgw up -d --name b` runs a second one beside the first.",
    )
    p.add_argument("--name", default=None,
                   help="the instance (default: default); any other name gets free ports unless "
                        "given; `dgw ls` lists the instances")
    p.add_argument("--config-dir", type=Path, default=DEMO_DIR,
                   help="shard files to serve, one shard per DIR/<shard>.yaml (default: the demo shard)")
    p.add_argument("--xds", default=None,
                   help=f"HOST:PORT of the control plane's gRPC (xDS for Envoy, the sidecar API); "
                        f"port 0 picks a free one (default: {DEFAULT_XDS} for the default instance, "
                        "a free port for any other)")
    p.add_argument("--admin", default=None,
                   help=f"HOST:PORT of the control plane's admin HTTP API (/v1/shards, /v1/nodes); "
                        f"port 0 picks a free one (default: {DEFAULT_ADMIN} for the default "
                        "instance, a free port for any other)")
    p.add_argument("--runtime", choices=["auto", "docker", "process"], default="auto",
                   help="where DALs run: auto (default) uses Docker when an engine answers and "
                        "has the DAL images, else local processes, and logs why")
    p.add_argument("--node-id", default=None,
                   help="this host's node id: Envoy's node.id and the sidecar's, and part of its "
                        "containers' names (default: NAME-<6 hex of the state dir>, unique per instance)")
    p.add_argument("--dal-user", metavar="USER",
                   help="run the local-process DALs as this user (e.g. nobody; needs root); "
                        "default: your own user")
    p.add_argument("--state-dir", type=Path, default=None,
                   help="where the server's data, Envoy's bootstrap, the DALs' logs and process "
                        "records live (default: $XDG_STATE_HOME/dgw/up/NAME, i.e. "
                        "~/.local/state/dgw/up/NAME)")
    p.add_argument("-d", "--detach", action="store_true",
                   help="run in the background and return once it serves; `dgw logs` shows "
                        "its logs, `dgw down` stops it")
    p.set_defaults(func=run)


@dataclass(frozen=True)
class Plan:
    """What this instance uses: decided once, from the flags and the instance's name."""

    name: str
    state_dir: Path
    node_id: str
    xds: str
    admin: str
    dal_user: str | None  # who local-process DALs run as (None: this process's user)
    config_dir: Path
    runtime: str

    @property
    def default(self) -> bool:
        return self.name == DEFAULT_NAME

    @property
    def context(self) -> str:
        return instances.context_name(self.name)

    def dgw(self, words: str) -> str:
        """A ``dgw`` command line that acts on this instance whichever context is current
        (plain for the default instance, as the README writes them)."""
        return f"dgw {words}" if self.default else f"dgw --context {self.context} {words}"

    def name_flag(self) -> str:
        return "" if self.default else f" --name {self.name}"


def plan(args: argparse.Namespace) -> Plan:
    name = instances.check_name(args.name or DEFAULT_NAME)
    state_dir = (args.state_dir or instances.default_state_dir(name)).absolute()
    own = name != DEFAULT_NAME
    return Plan(
        name=name,
        state_dir=state_dir,
        node_id=args.node_id or instances.node_id(name, state_dir),
        xds=args.xds or ("127.0.0.1:0" if own else DEFAULT_XDS),
        admin=args.admin or ("127.0.0.1:0" if own else DEFAULT_ADMIN),
        dal_user=args.dal_user,
        config_dir=args.config_dir,
        runtime=args.runtime,
    )


def forget_cached_configs(state_dir: Path) -> None:
    """The sidecar keeps the last config it got so that it can serve while its server
    is away. An embedded run brings its own server: an earlier run's copy is stale
    (its ports may have changed since) and must not be applied first."""
    from sidecar.config_follower import CACHE_FILE

    for path in state_dir.glob(f"*/{CACHE_FILE}"):
        path.unlink(missing_ok=True)


def free_listener_ports(config_dir: Path) -> dict[str, str]:
    """A free port for each ``${VAR}`` a listener's port comes from and the
    environment does not set: a named instance never takes the default's ports."""
    from sidecar.ports import free_port

    from .preflight import port_variables

    chosen = {var: str(free_port()) for var in port_variables(config_dir) if not os.environ.get(var)}
    os.environ.update(chosen)  # the embedded server interpolates from this environment
    return chosen


class _AgentRuntimeLine(logging.Filter):
    """``dgw up`` chose the runtime and logged why; the agent, told which one, would
    log ``reason=requested`` although the user asked for nothing."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("event=runtime_selected")


async def _start_server(p: Plan) -> tuple[XdsServer, list[str]]:
    """The control plane, started, with its shards; or UpError when a port is taken or
    no shard is usable (nothing left running)."""
    from xds_server.server import DataDirError, XdsServer

    from . import preflight

    busy = preflight.busy_server_ports({"--xds": p.xds, "--admin": p.admin}, p.name)
    if busy:
        raise UpError("\n".join(busy))
    # The server's data (config store, tokens, CA, the first start's admin.token, the
    # admin socket) in the instance's state dir, named by its context. The join port
    # is for this process's own sidecars and `dgw client-proxy --join` (the context says where).
    server = XdsServer(ServerSettings(config_dir=p.config_dir, xds=p.xds, admin=p.admin,
                                      data_dir=p.state_dir / UP_SERVER_DIR, join="127.0.0.1:0"))
    try:
        await server.start()
    except DataDirError:
        raise UpError(f"instance {p.name}: its state dir {p.state_dir} is in use by another process "
                      f"(pid {_lock_holder(p.state_dir)}): stop that one, or start this one with another "
                      "--name") from None  # fmt: skip
    shards = sorted(server.registry.shards)
    if not shards:
        rejected = [e for r in server.registry.rejections.values() for e in r.errors]
        problems = [f"no usable shard in {p.config_dir}", *rejected]
    else:
        problems = _busy(server, shards)
    if problems:
        await server.stop()
        raise UpError("\n".join(problems))
    return server, shards


def _lock_holder(state_dir: Path) -> str:
    from xds_server.store.sqlite import LOCK_NAME

    try:
        return (state_dir / UP_SERVER_DIR / LOCK_NAME).read_text().strip() or "?"
    except OSError:
        return "?"


def _busy(server: XdsServer, shards: list[str]) -> list[str]:
    from . import preflight

    configs = {s: (server.registry.shards[s].config, server.registry.shards[s].source) for s in shards}
    return preflight.busy_ports(configs, server.settings.public_address)


async def _up(p: Plan) -> None:
    from sidecar.config import SidecarSettings

    from .runtime_choice import RuntimeChoice, choose_runtime
    from .up_gateways import Gateways

    # DAL commands like `python3 -m dals.kv serve` must find this installation's Python.
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    p.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    forget_cached_configs(p.state_dir)
    if not p.default:
        free_listener_ports(p.config_dir)
    if p.config_dir.resolve() == DEMO_DIR:
        from .demo_storage import prepare

        storage = await prepare(str(p.state_dir), None if p.default else p.node_id)
        log.info("demo_storage", dal="cql", engine=storage.engine, reason=storage.reason,
                 schema=os.environ.get("DGW_DEMO_PG_SCHEMA", "(the shard file's)"),
                 cache_prefix=os.environ.get("DGW_DEMO_KV_PREFIX", "(the shard file's)"))
    instances.write_pid(p.state_dir, os.getpid())
    try:
        server, shards = await _start_server(p)
    except BaseException:
        instances.clear_pid(p.state_dir, os.getpid())
        raise

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    agent_log = logging.getLogger("dgw.sidecar")
    quiet_agent = _AgentRuntimeLine()
    agent_log.addFilter(quiet_agent)
    gateways: Gateways | None = None
    tasks: list[asyncio.Task[Any]] = []
    try:
        if p.runtime == "auto":
            choice = choose_runtime([server.registry.shards[s].config for s in shards])
        else:
            choice = RuntimeChoice(p.runtime, "requested")  # type: ignore[arg-type]
        log.info("runtime_selected", runtime=choice.runtime, reason=choice.reason)
        xds = f"{p.xds.rpartition(':')[0]}:{server.xds_port}"

        def settings(shard: str) -> SidecarSettings:
            return SidecarSettings(
                server=xds, shard=shard, node_id=p.node_id, runtime=choice.runtime,
                state_dir=p.state_dir, dal_user=p.dal_user,
                stop_dals_on_exit=True, **_join(server, shard, p.state_dir),
            )

        _write_context(p, server)
        recording = asyncio.create_task(_keep_record(p, server, choice.runtime, stop))
        tasks.append(recording)
        gateways = Gateways(server, settings)
        admin_sockets = {shard: gateways.start(shard) for shard in shards}
        stopping = asyncio.create_task(stop.wait())
        serving = asyncio.create_task(_serving(server, shards, p.node_id, admin_sockets))
        tasks += [stopping, serving]
        await _first(serving, stopping, gateways.tasks())
        if serving.done():
            _banner(server, shards, p)
            following = asyncio.create_task(gateways.follow(
                stop, lambda shard, admin: _announce(server, shard, p, admin),
                lambda shard: _busy(server, [shard]),
            ))
            tasks.append(following)
            await _first(stopping, stopping, [following, recording])
    finally:
        stop.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if gateways is not None:
            await gateways.stop_all()
        agent_log.removeFilter(quiet_agent)
        for token_file in p.state_dir.glob("join-*.token"):  # spent, but no need to keep
            token_file.unlink(missing_ok=True)
        _remove_context(p)
        await server.stop()
        instances.clear_pid(p.state_dir, os.getpid())


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


# --- the context and the record ---------------------------------------------------------


def _admin_host(address: str) -> str:
    host = address.rpartition(":")[0].strip("[]")
    return "127.0.0.1" if host in ("", "0.0.0.0") else ("::1" if host == "::" else host)


def _write_context(p: Plan, server: XdsServer) -> None:
    """Write and select this instance's context: its admin API (through the admin
    socket), token file, CA, xDS and join addresses."""
    from common.hostport import join_host_port

    from .contexts import Context, ContextError, update

    token = server.admin_token_path
    ca = server.settings.ca_directory() / "ca.crt"
    context = Context(
        server=f"http://{join_host_port(_admin_host(p.admin), server.admin_port)}",
        admin_socket=server.admin_socket, token_file=token if token.exists() else None,
        ca=ca if ca.exists() else None, xds=f"{_admin_host(p.xds)}:{server.xds_port}",
        join=f"127.0.0.1:{server.join_port}" if server.join_port else None,
        instance=p.name, state_dir=p.state_dir,
    )  # fmt: skip
    try:
        with update() as contexts:
            contexts.contexts[p.context] = context
            contexts.current_context = p.context
    except ContextError as e:
        raise UpError(f"cannot write this instance's context: {e}") from None
    log.info("context_selected", context=p.context, server=context.server, admin_socket=str(server.admin_socket))


def _remove_context(p: Plan) -> None:
    """Remove this instance's context (unless another run of it has taken it over)."""
    from .contexts import ContextError, update

    try:
        with update() as contexts:
            mine = contexts.contexts.get(p.context)
            if mine is not None and mine.state_dir == p.state_dir:
                del contexts.contexts[p.context]
                if contexts.current_context == p.context:
                    contexts.current_context = None
    except (ContextError, OSError) as e:
        log.warning("context_not_removed", context=p.context, error=str(e))


def _record(p: Plan, server: XdsServer, runtime: str) -> instances.Record:
    shards = {}
    for name, state in sorted(server.registry.shards.items()):
        listeners = {n: (lst.address.port or str(lst.address)) for n, lst in
                     state.config.proxy_config.public_listeners.items()}  # fmt: skip
        shards[name] = instances.ShardRecord(listeners=listeners, dals=sorted(state.config.container_dals))
    return instances.Record(
        name=p.name, state_dir=p.state_dir, config_dir=p.config_dir.absolute(), node_id=p.node_id,
        runtime=runtime, context=p.context,
        admin=f"http://{_admin_host(p.admin)}:{server.admin_port}", admin_socket=server.admin_socket,
        xds=f"{_admin_host(p.xds)}:{server.xds_port}",
        join=f"127.0.0.1:{server.join_port}" if server.join_port else None,
        ca=server.settings.ca_directory() / "ca.crt", shards=shards,
    )  # fmt: skip


async def _keep_record(p: Plan, server: XdsServer, runtime: str, stop: asyncio.Event) -> None:
    """Write ``instance.json`` now, and again when the shards (their listeners, their
    DALs) change."""
    from .up_gateways import FOLLOW_S

    written = _record(p, server, runtime)
    instances.write_record(written)
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), FOLLOW_S)
        except TimeoutError:
            current = _record(p, server, runtime)
            if current.shards != written.shards:
                instances.write_record(current)
                written = current


# --- serving --------------------------------------------------------------------------


async def _first(
    watched: asyncio.Task[Any], stopping: asyncio.Task[Any], agents: list[asyncio.Task[None]]
) -> None:
    """Wait for ``watched``, a stop request or an agent's end, whichever comes first;
    an agent that failed, or a failed ``watched``, raises here."""
    done, _ = await asyncio.wait({watched, stopping, *agents}, return_when=asyncio.FIRST_COMPLETED)
    for task in done:
        error = None if task is stopping or task.cancelled() else task.exception()
        if error is not None:
            raise error


async def _serving(server: XdsServer, shards: list[str], node_id: str, admin_sockets: dict[str, Path]) -> None:
    for shard in shards:
        await _shard_serving(server, shard, node_id, admin_sockets[shard])


async def _shard_serving(server: XdsServer, shard: str, node_id: str, admin_socket: Path) -> None:
    from . import ready

    def slow(waits: list[str]) -> None:
        print(f"dgw up: shard {shard} not serving yet, still waiting: {'; '.join(waits)}",
              file=sys.stderr, flush=True)

    try:
        await ready.wait_serving(
            lambda: server.registry.shards[shard].ir,
            admin_socket,
            lambda: [s for s in server.cache.node_status() if s.shard == shard and s.node_id == node_id],
            PATIENCE_S,
            slow,
        )
    except ready.NotServing as e:
        raise UpError(_explain(server, shard, e)) from None


async def _announce(server: XdsServer, shard: str, p: Plan, admin_socket: Path) -> None:
    """A shard that appeared while running: say when its gateway serves, and where."""
    await _shard_serving(server, shard, p.node_id, admin_socket)
    print("\n".join([f"Shard {shard} is up:", *_shard_lines(server, shard, p)]), flush=True)


def _explain(server: XdsServer, shard: str, error: NotServing) -> str:
    """Envoy's refusal, plus what to change when it is a public port."""
    from . import preflight

    state = server.registry.shards[shard]
    for name, listener in state.config.proxy_config.public_listeners.items():
        if error.port is not None and listener.address.port == error.port:
            return (f"{error} (listener {shard}.{name}): "
                    f"{preflight.advice(state.source, name, error.port, server.settings.public_address)}")
    return str(error)


def _shard_lines(server: XdsServer, shard: str, p: Plan) -> list[str]:
    lines = []
    for name, listener in server.registry.shards[shard].config.proxy_config.public_listeners.items():
        where = listener.address
        secured = (f", mTLS: a client certificate from `{p.dgw('ca issue --identity ACCOUNT-APP')}`"
                   if listener.tls_creds else "")  # fmt: skip
        if where.port and listener.mode == "http" and not secured:
            lines.append(f"  curl -s http://127.0.0.1:{where.port}/      # {shard}.{name} through Envoy")
        elif where.port:
            lines.append(f"  127.0.0.1:{where.port}  ({listener.mode}, {shard}.{name}{secured})")
    lines.append(f"  {p.dgw(f'get shard {shard}')}")
    return lines


def _banner(server: XdsServer, shards: list[str], p: Plan) -> None:
    admin = f"http://{_admin_host(p.admin)}:{server.admin_port}"
    label = "" if p.default else f"instance {p.name}, "
    lines = [f"Data Gateway is up ({label}shards: {', '.join(shards)}). Try:"]
    for shard in shards:
        lines += _shard_lines(server, shard, p)
    status = p.dgw("status")
    lines += [f"  {status}{' ' * max(1, 44 - len(status))}# every Envoy: SYNCED / STALE / NACKED",
              f"Context {p.context} (now current): admin API {admin}, xDS {_admin_host(p.xds)}:"
              f"{server.xds_port}, join 127.0.0.1:{server.join_port}",
              f"  its token {server.admin_token_path} goes only through {server.admin_socket}"
              if server.admin_socket else f"  no admin socket (its path is too long: a shorter --state-dir); "
                                          f"give its token with $DGW_TOKEN: {server.admin_token_path}",
              f"Edit {p.config_dir}/*.yaml to rewire live; "
              + (f"`dgw down{p.name_flag()}` stops everything." if os.environ.get(BACKGROUND_ENV)
                 else "Ctrl-C stops everything.")]  # fmt: skip
    print("\n".join(lines), flush=True)


def run(args: argparse.Namespace) -> int:
    from sidecar.errors import SidecarError

    try:
        p = plan(args)
    except InstanceError as e:
        print(f"dgw up: {e}", file=sys.stderr)
        return 2
    pid = instances.running_pid(p.state_dir)
    if pid is not None and pid != os.getpid():  # `up -d` records its child before the child looks
        print(f"dgw up: instance {p.name} is already running (pid {pid}, state dir {p.state_dir}): "
              f"`dgw down{p.name_flag()}` stops it; `dgw up --name OTHER` starts another beside it",
              file=sys.stderr)  # fmt: skip
        return 1
    if args.detach:
        from .daemon import detach

        return detach(p.state_dir, p.name_flag(), [a for a in sys.argv[1:] if a not in ("-d", "--detach")])

    try:
        asyncio.run(_up(p))
    except UpError as e:
        for line in str(e).splitlines():
            print(f"dgw up: {line}", file=sys.stderr)
        return 1
    except (SidecarError, OSError, ValueError) as e:
        print(f"dgw up: {e}", file=sys.stderr)
        return 1
    return 0
