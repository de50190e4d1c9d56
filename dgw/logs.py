"""``dgw logs [NAME]``: the embedded gateway's logs, wherever they live.

No NAME: the gateway's own log (``dgw up -d`` writes it to ``STATE_DIR/up.log``).
``envoy``: each shard's Envoy log. A DAL name: its log file (process runtime) or its
container's output (Docker runtime).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import deque
from pathlib import Path

from . import daemon

POLL_S = 0.2


def _files(state_dir: Path, name: str | None) -> list[Path]:
    if name is None:
        return [daemon.log_file(state_dir)]
    if name == "envoy":
        return sorted(state_dir.glob("*/envoy.log"))
    return sorted(state_dir.glob(f"*/logs/{name}.log"))


def _tail(path: Path, lines: int) -> tuple[list[str], int]:
    with open(path, "rb") as f:
        text = f.read().decode("utf-8", "replace")
        return list(deque(text.splitlines(), maxlen=lines)), f.tell()


def _follow(paths: list[Path], offsets: dict[Path, int]) -> None:
    """Print what the files gain until Ctrl-C."""
    while True:
        for path in paths:
            with open(path, "rb") as f:
                f.seek(offsets[path])
                data = f.read()
                offsets[path] = f.tell()
            if data:
                sys.stdout.write(data.decode("utf-8", "replace"))
                sys.stdout.flush()
        time.sleep(POLL_S)


def _container_logs(dal: str, lines: int, follow: bool) -> bool:
    """Print a DAL container's output; False if no engine or no such container."""
    import docker

    from sidecar.runtimes.base import RuntimeUnavailable
    from sidecar.runtimes.docker import connect
    from sidecar.spec import LABEL_DAL, LABEL_MANAGED_BY, MANAGED_BY

    try:
        client = connect()
    except RuntimeUnavailable:
        return False
    try:
        labels = [f"{LABEL_MANAGED_BY}={MANAGED_BY}", f"{LABEL_DAL}={dal}"]
        containers = client.containers.list(all=True, filters={"label": labels})
        for container in containers:
            if follow:
                for chunk in container.logs(stream=True, follow=True, tail=lines):
                    sys.stdout.write(chunk.decode("utf-8", "replace"))
                    sys.stdout.flush()
            else:
                sys.stdout.write(container.logs(tail=lines).decode("utf-8", "replace"))
        return bool(containers)
    except docker.errors.DockerException as e:
        print(f"dgw logs: {dal}: {e}", file=sys.stderr)
        return True
    finally:
        client.close()


def cmd_logs(args: argparse.Namespace) -> int:
    files = [p for p in _files(args.state_dir, args.name) if p.is_file()]
    if not files:
        if args.name not in (None, "envoy") and _container_logs(args.name, args.lines, args.follow):
            return 0
        what = "the gateway's log (written by `dgw up -d`)" if args.name is None else f"no log of {args.name!r}"
        print(f"dgw logs: {what} not found under {args.state_dir}", file=sys.stderr)
        return 1
    offsets: dict[Path, int] = {}
    for path in files:
        lines, offsets[path] = _tail(path, args.lines)
        if len(files) > 1:
            print(f"==> {path} <==")
        print("\n".join(lines))
    if args.follow:
        _follow(files, offsets)
    return 0


def add_command(sub: argparse._SubParsersAction[argparse.ArgumentParser], state_dir: Path) -> None:
    p = sub.add_parser("logs", help="show the logs of the embedded gateway, its Envoy or one DAL")
    p.add_argument("name", nargs="?", metavar="DAL|envoy",
                   help="a DAL name, or envoy (default: the gateway's own log, from `dgw up -d`)")
    p.add_argument("-n", "--lines", type=int, default=50, help="lines to show from the end (default: %(default)s)")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing what is added (Ctrl-C ends)")
    p.add_argument("--state-dir", type=Path, default=state_dir,
                   help="the state dir `dgw up` used (default: %(default)s)")
    p.set_defaults(func=cmd_logs)
