"""``dgw ls``: the instances of the embedded gateway (``dgw up --name N``), running or
not, like ``docker compose ls``: name, state, pid, context, admin API, shards, state dir."""

from __future__ import annotations

import argparse
import json
import sys

import yaml

from . import instances
from .contexts import ContextError, load
from .ops import table


def cmd_ls(args: argparse.Namespace) -> int:
    try:
        current = load().current_context
        found = instances.every_instance()
    except ContextError as e:
        print(f"dgw ls: {e}", file=sys.stderr)
        return 1
    rows, data = [], []
    for instance in found:
        record, pid = instance.record, instance.pid
        context = instances.context_name(instance.name)
        shards = ", ".join(f"{s} ({', '.join(f'{n}:{p}' for n, p in info.listeners.items())})"
                           for s, info in (record.shards if record else {}).items())  # fmt: skip
        rows.append(["*" if context == current and pid else "", instance.name,
                     f"running (pid {pid})" if pid else "stopped", context if pid else "-",
                     record.admin if record and pid else "-", shards or "-", str(instance.state_dir)])  # fmt: skip
        data.append({"name": instance.name, "running": pid is not None, "pid": pid,
                     "context": context if pid else None, "current": context == current and pid is not None,
                     "state_dir": str(instance.state_dir),
                     "record": json.loads(record.model_dump_json()) if record else None})  # fmt: skip
    if args.output == "json":
        print(json.dumps(data, indent=1))
    elif args.output == "yaml":
        sys.stdout.write(yaml.safe_dump(data, sort_keys=False))
    elif not rows:
        print(f"no instances (`dgw up` starts one; they live in {instances.instances_root()})")
    else:
        print(table(["CURRENT", "NAME", "STATE", "CONTEXT", "ADMIN", "SHARDS", "STATE DIR"], rows))
    return 0


def add_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("ls", help="list the instances `dgw up` started, running or stopped")
    p.set_defaults(func=cmd_ls)
