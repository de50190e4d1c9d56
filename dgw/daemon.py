"""``dgw up -d`` and ``dgw down``: the embedded gateway in the background.

``up -d`` starts ``dgw up`` as a child in its own session, its output in
``STATE_DIR/up.log`` and its PID in ``STATE_DIR/up.pid``, and returns once the
gateway serves (or fails). ``down`` stops that PID, and only that one: ``dgw up``
itself then stops the Envoys and DALs it started.
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

BANNER = "Data Gateway is up"
# Set for the background child: its banner then names `dgw down`, not Ctrl-C.
BACKGROUND_ENV = "DGW_UP_BACKGROUND"
POLL_S = 0.1
START_TIMEOUT_S = 300.0
STOP_TIMEOUT_S = 60.0


def pid_file(state_dir: Path) -> Path:
    return state_dir / "up.pid"


def log_file(state_dir: Path) -> Path:
    return state_dir / "up.log"


def running_pid(state_dir: Path) -> int | None:
    """The PID of the ``dgw up`` that ``up -d`` started here, if it still runs. A PID
    now held by another program (reused after a reboot) does not count."""
    try:
        pid = int(pid_file(state_dir).read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return None
    return pid if b"dgw.cli" in cmdline and b"up" in cmdline else None


def detach(args: argparse.Namespace, argv: list[str]) -> int:
    """Start ``dgw ARGV`` (an ``up`` without ``-d``) in the background; return when it
    serves or fails."""
    state_dir: Path = args.state_dir
    pid = running_pid(state_dir)
    if pid is not None:
        print(f"dgw up: already running in the background (pid {pid}); `dgw down` stops it",
              file=sys.stderr)
        return 1
    state_dir.mkdir(mode=0o711, parents=True, exist_ok=True)
    log = log_file(state_dir)
    log.unlink(missing_ok=True)  # each run's log starts empty (a link there is removed, not followed)
    with open_log(log) as out:
        child = subprocess.Popen(
            [sys.executable, "-m", "dgw.cli", *argv],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, BACKGROUND_ENV: "1"},
        )
    pid_file(state_dir).write_text(f"{child.pid}\n")
    deadline = time.monotonic() + START_TIMEOUT_S
    while child.poll() is None and BANNER not in log.read_text(errors="replace"):
        if time.monotonic() > deadline:
            print(f"dgw up: not serving after {START_TIMEOUT_S:.0f} s; it keeps trying in the "
                  f"background (pid {child.pid}): see `dgw logs`", file=sys.stderr)
            return 1
        time.sleep(POLL_S)
    text = log.read_text(errors="replace")
    if child.poll() is not None:
        pid_file(state_dir).unlink(missing_ok=True)
        failures = [line for line in text.splitlines() if line.startswith("dgw up:")]
        print("\n".join(failures or text.splitlines()[-20:]), file=sys.stderr)
        return 1
    banner = text[text.index(BANNER):].splitlines()
    print("\n".join(banner[: next(i for i, line in enumerate(banner) if line.startswith("Edit "))]))
    print(f"Running in the background (pid {child.pid}): `dgw logs [DAL|envoy]` shows the logs, "
          "`dgw down` stops everything.")
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    pid = running_pid(args.state_dir)
    if pid is None:
        pid_file(args.state_dir).unlink(missing_ok=True)
        print(f"dgw down: no background dgw up in {args.state_dir}", file=sys.stderr)
        return 1
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while Path(f"/proc/{pid}").exists() and not _zombie(pid):
        if time.monotonic() > deadline:
            print(f"dgw down: pid {pid} still stopping after {STOP_TIMEOUT_S:.0f} s", file=sys.stderr)
            return 1
        time.sleep(POLL_S)
    pid_file(args.state_dir).unlink(missing_ok=True)
    print(f"dgw down: stopped (pid {pid})", file=sys.stderr)
    return 0


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z")
    except (OSError, IndexError):
        return False


def add_command(sub: argparse._SubParsersAction[argparse.ArgumentParser], state_dir: Path) -> None:
    p = sub.add_parser("down", help="stop the gateway `dgw up -d` started")
    p.add_argument("--state-dir", type=Path, default=state_dir,
                   help="the state dir `dgw up -d` used (default: %(default)s)")
    p.set_defaults(func=cmd_down)
