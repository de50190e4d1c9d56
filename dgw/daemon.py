"""``dgw up -d`` and ``dgw down``: an instance of the embedded gateway in the background.

``up -d`` starts ``dgw up`` as a child in its own session, its output in
``STATE_DIR/up.log`` and its pid in ``STATE_DIR/up.pid``, and returns once the
gateway serves (or fails). ``down`` stops an instance's ``dgw up`` (started with or
without ``-d``), and only that process: ``dgw up`` itself then stops the Envoys and
DALs it started and removes its context.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from common.files import open_log

from . import instances

BANNER = "Data Gateway is up"
# Set for the background child: its banner then names `dgw down`, not Ctrl-C.
BACKGROUND_ENV = "DGW_UP_BACKGROUND"
POLL_S = 0.1
START_TIMEOUT_S = 300.0
STOP_TIMEOUT_S = 60.0


def log_file(state_dir: Path) -> Path:
    return state_dir / instances.LOG_FILE


def detach(state_dir: Path, name_flag: str, argv: list[str]) -> int:
    """Start ``dgw ARGV`` (an ``up`` without ``-d``) in the background; return when it
    serves or fails."""
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    log = log_file(state_dir)
    log.unlink(missing_ok=True)  # each run's log starts empty (a link there is removed, not followed)
    with open_log(log) as out:
        child = subprocess.Popen(
            [sys.executable, "-m", "dgw.cli", *argv],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, BACKGROUND_ENV: "1"},
        )
    instances.write_pid(state_dir, child.pid)
    deadline = time.monotonic() + START_TIMEOUT_S
    while child.poll() is None and BANNER not in log.read_text(errors="replace"):
        if time.monotonic() > deadline:
            print(f"dgw up: not serving after {START_TIMEOUT_S:.0f} s; it keeps trying in the "
                  f"background (pid {child.pid}): see `dgw logs{name_flag}`", file=sys.stderr)
            return 1
        time.sleep(POLL_S)
    text = log.read_text(errors="replace")
    if child.poll() is not None:
        instances.clear_pid(state_dir, child.pid)
        failures = [line for line in text.splitlines() if line.startswith("dgw up:")]
        print("\n".join(failures or text.splitlines()[-20:]), file=sys.stderr)
        return 1
    banner = text[text.index(BANNER):].splitlines()
    print("\n".join(banner[: next(i for i, line in enumerate(banner) if line.startswith("Edit "))]))
    print(f"Running in the background (pid {child.pid}): `dgw logs{name_flag} [DAL|envoy]` shows the "
          f"logs, `dgw down{name_flag}` stops everything.")  # fmt: skip
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    try:
        instance = instances.find(args.name, args.state_dir, args.dgw_context)
    except instances.InstanceError as e:
        print(f"dgw down: {e}", file=sys.stderr)
        return 2
    pid = instance.pid
    if pid is None:
        _forget_context(instance)
        others = instances.describe_others(instance.state_dir)
        print(f"dgw down: instance {instance.name} is not running ({instance.why}; state dir "
              f"{instance.state_dir}); instances: {others}", file=sys.stderr)  # fmt: skip
        return 1
    started = instances.start_time(pid)
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while started is not None and instances.start_time(pid) == started:  # until that process is gone
        if time.monotonic() > deadline:
            print(f"dgw down: instance {instance.name} (pid {pid}) still stopping after "
                  f"{STOP_TIMEOUT_S:.0f} s", file=sys.stderr)  # fmt: skip
            return 1
        time.sleep(POLL_S)
    instances.clear_pid(instance.state_dir, pid)
    _forget_context(instance)
    print(f"dgw down: stopped instance {instance.name} (pid {pid}); context "
          f"{instances.context_name(instance.name)} removed", file=sys.stderr)  # fmt: skip
    _say_current()
    return 0


def _forget_context(instance: instances.Instance) -> None:
    """The instance's context, if ``dgw up`` could not remove it (killed)."""
    from .contexts import update

    name = instances.context_name(instance.name)
    with update() as contexts:
        mine = contexts.contexts.get(name)
        if mine is not None and mine.state_dir is not None and mine.state_dir.absolute() == instance.state_dir.absolute():
            del contexts.contexts[name]
            if contexts.current_context == name:
                contexts.current_context = None


def _say_current() -> None:
    from .contexts import load

    if load().current_context is None:
        running = [i for i in instances.every_instance() if i.pid is not None]
        hint = "; ".join(f"`dgw config use-context {instances.context_name(i.name)}`" for i in running)
        print("dgw down: no current context now" + (f" ({hint})" if hint else ""), file=sys.stderr)


def add_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("down", help="stop an instance `dgw up` started (and remove its context)")
    p.add_argument("--name", help="the instance (default: the current context's, else default)")
    p.add_argument("--state-dir", type=Path, default=None, help="the instance's state dir, if not the default one")
    p.set_defaults(func=cmd_down)
