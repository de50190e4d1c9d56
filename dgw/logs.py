"""``dgw logs [NAME]``: an instance's logs, wherever this run of it keeps them.

No NAME: the gateway's own log (``dgw up -d`` writes it to ``STATE_DIR/up.log``).
``envoy``: each shard's Envoy log. A DAL name: where the instance's runtime keeps it,
as ``instance.json`` records: the container's own output under Docker (found by the
instance's node id, so another instance's container of the same DAL is never shown),
the DAL's log file under the process runtime. A name that is none of these is an
error listing the names there are.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import deque
from pathlib import Path

from sidecar.config import agent_dir_name

from . import daemon, instances

POLL_S = 0.2


class LogsError(Exception):
    pass


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


def _print_files(files: list[Path], lines: int, follow: bool) -> None:
    offsets: dict[Path, int] = {}
    for path in files:
        tail, offsets[path] = _tail(path, lines)
        if len(files) > 1:
            print(f"==> {path} <==")
        print("\n".join(tail))
    if follow:
        _follow(files, offsets)


def _dals(record: instances.Record | None) -> dict[str, list[str]]:
    """DAL name → the shards that have one of that name."""
    found: dict[str, list[str]] = {}
    for shard, info in sorted((record.shards if record else {}).items()):
        for dal in info.dals:
            found.setdefault(dal, []).append(shard)
    return found


def _container_logs(record: instances.Record, dal: str, shards: list[str], lines: int, follow: bool) -> None:
    """Print the output of the instance's containers of ``dal``."""
    import docker

    from sidecar.runtimes.base import RuntimeUnavailable
    from sidecar.runtimes.docker import connect, owner_filters
    from sidecar.spec import LABEL_DAL

    try:
        client = connect()
    except RuntimeUnavailable as e:
        raise LogsError(f"{dal} runs in Docker (instance {record.name}) but {e}") from None
    try:
        containers = []
        for shard in shards:
            filters = owner_filters(shard, record.node_id)
            filters["label"].append(f"{LABEL_DAL}={dal}")
            containers += client.containers.list(all=True, filters=filters)
        if not containers:
            raise LogsError(f"no container of DAL {dal} for instance {record.name} (node {record.node_id}); "
                            "it may be starting or stopped: `dgw status`")  # fmt: skip
        for container in containers:
            if len(containers) > 1:
                print(f"==> container {container.name} <==")
            if follow:
                for chunk in container.logs(stream=True, follow=True, tail=lines):
                    sys.stdout.write(chunk.decode("utf-8", "replace"))
                    sys.stdout.flush()
            else:
                sys.stdout.write(container.logs(tail=lines).decode("utf-8", "replace"))
    except docker.errors.DockerException as e:
        raise LogsError(f"{dal}: the Docker engine: {e}") from None
    finally:
        client.close()


def _show(instance: instances.Instance, name: str | None, lines: int, follow: bool) -> None:
    state_dir = instance.state_dir
    if name is None:
        log = daemon.log_file(state_dir)
        if not log.is_file():
            raise LogsError(f"instance {instance.name} has no log of its own: {log} is written by "
                            "`dgw up -d` (a dgw up in the foreground prints to its terminal)")  # fmt: skip
        return _print_files([log], lines, follow)
    if name == "envoy":
        files = sorted(state_dir.glob("*/envoy.log"))
        if not files:
            raise LogsError(f"instance {instance.name} has no Envoy log under {state_dir} yet")
        return _print_files(files, lines, follow)
    record = instance.record
    dals = _dals(record)
    if name not in dals:
        known = ", ".join(sorted(dals)) or "none recorded"
        raise LogsError(f"instance {instance.name} has no DAL {name!r}: its DALs are {known}; "
                        "`envoy` shows Envoy's log, no name the gateway's own")  # fmt: skip
    assert record is not None
    if record.runtime == "docker":
        return _container_logs(record, name, dals[name], lines, follow)
    files = [f for shard in dals[name]
             if (f := state_dir / agent_dir_name(shard, record.node_id) / "logs" / f"{name}.log").is_file()]  # fmt: skip
    if not files:
        raise LogsError(f"no log of DAL {name} under {state_dir} yet (instance {instance.name}, process runtime)")
    _print_files(files, lines, follow)


def cmd_logs(args: argparse.Namespace) -> int:
    try:
        instance = instances.find(args.instance, args.state_dir, args.dgw_context)
        if not instance.state_dir.is_dir():
            raise LogsError(f"no instance {instance.name} ({instance.why}); instances: "
                            f"{instances.describe_others()}")  # fmt: skip
        _show(instance, args.name, args.lines, args.follow)
    except (LogsError, instances.InstanceError) as e:
        print(f"dgw logs: {e}", file=sys.stderr)
        return 1
    return 0


def add_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("logs", help="show an instance's logs: its own, its Envoy's or one DAL's")
    p.add_argument("name", nargs="?", metavar="DAL|envoy",
                   help="a DAL name, or envoy (default: the gateway's own log, from `dgw up -d`)")
    p.add_argument("--name", dest="instance", metavar="INSTANCE",
                   help="the instance (default: the current context's, else default)")
    p.add_argument("-n", "--lines", type=int, default=50, help="lines to show from the end (default: %(default)s)")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing what is added (Ctrl-C ends)")
    p.add_argument("--state-dir", type=Path, default=None, help="the instance's state dir, if not the default one")
    p.set_defaults(func=cmd_logs)
