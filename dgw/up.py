"""``dgw up``: the embedded default — xds_server + sidecar + Envoy + DALs on one host.

One process, one asyncio loop: the control plane serves the shards of a config dir
(the demo shard by default) and a sidecar per shard runs its DALs (local processes
unless told otherwise) and Envoy, all on loopback.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from pathlib import Path

from xds_server.server import XdsServer
from xds_server.settings import DEFAULT_ADMIN, DEFAULT_XDS, ServerSettings

DEMO_DIR = Path(__file__).resolve().parents[1] / "deploy" / "demo" / "shards"
DEFAULT_ENVOY_ADMIN_PORT = 9901


def add_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("up", help="run xds_server + sidecar + Envoy + sample DALs on this host")
    p.add_argument("--config-dir", type=Path, default=DEMO_DIR,
                   help="shard files to serve (default: the demo shard)")
    p.add_argument("--xds", default=DEFAULT_XDS)
    p.add_argument("--admin", default=DEFAULT_ADMIN)
    p.add_argument("--runtime", choices=["process", "docker", "auto"], default="process",
                   help="where DALs run (default: local processes; docker needs an engine "
                        "and the DAL images)")
    p.add_argument("--node-id", default="local-1")
    p.add_argument("--envoy-admin-port", type=int, default=DEFAULT_ENVOY_ADMIN_PORT)
    p.add_argument("--state-dir", type=Path, default=Path(".work/up"))
    p.set_defaults(func=run)


async def _up(args: argparse.Namespace) -> None:
    from sidecar.config import SidecarSettings
    from sidecar.main import run_sidecar
    from sidecar.ports import PortClaims

    # DAL commands like `python3 -m dals.sample` must find this installation's Python.
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    server = XdsServer(ServerSettings(config_dir=args.config_dir, xds=args.xds, admin=args.admin))
    await server.start()
    shards = sorted(server.registry.shards)
    if not shards:
        await server.stop()
        problems = [e for r in server.registry.rejections.values() for e in r.errors]
        raise SystemExit("dgw up: no usable shard in " + str(args.config_dir) +
                         ("".join(f"\n  {p}" for p in problems) or ""))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    xds = f"{args.xds.rpartition(':')[0]}:{server.xds_port}"
    agents = []
    claims = PortClaims()
    for i, shard in enumerate(shards):
        settings = SidecarSettings(
            server=xds, shard=shard, node_id=args.node_id, runtime=args.runtime,
            state_dir=args.state_dir, envoy_admin_port=args.envoy_admin_port + i,
            stop_dals_on_exit=True,
        )
        agents.append(asyncio.create_task(run_sidecar(settings, stop, claims), name=f"sidecar-{shard}"))
    _banner(server, shards, args)
    try:
        done, _ = await asyncio.wait(
            [asyncio.create_task(stop.wait()), *agents], return_when=asyncio.FIRST_COMPLETED
        )
        for task in done:
            if task in agents and task.exception():
                raise task.exception()
    finally:
        stop.set()
        for task in agents:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(task, 15)
        await server.stop()


def _banner(server: XdsServer, shards: list[str], args: argparse.Namespace) -> None:
    admin = f"http://127.0.0.1:{server.admin_port}"
    lines = [f"Data Gateway is up (shards: {', '.join(shards)}). Try:"]
    for shard in shards:
        for name, listener in server.registry.shards[shard].config.proxy_config.public_listeners.items():
            where = listener.address
            if where.port and listener.mode == "http":
                lines.append(f"  curl -s http://127.0.0.1:{where.port}/hello      # {shard}.{name} through Envoy")
            elif where.port:
                lines.append(f"  127.0.0.1:{where.port}  ({listener.mode}, {shard}.{name})")
        lines.append(f"  curl -s {admin}/v1/shards/{shard}")
    lines += [f"  curl -s {admin}/v1/nodes", f"Edit {args.config_dir}/*.yaml to rewire live; Ctrl-C stops everything."]
    print("\n".join(lines), file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    from sidecar.errors import SidecarError

    try:
        asyncio.run(_up(args))
    except (SidecarError, OSError, ValueError) as e:
        print(f"dgw up: {e}", file=sys.stderr)
        return 1
    return 0
