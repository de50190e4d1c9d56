"""Loopback ports, polling with a deadline, and child processes killed by PID."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")
ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(check: Callable[[], T], timeout: float = 10.0, interval: float = 0.02, what: str = "") -> T:
    """Poll ``check`` until it returns a truthy value; fail with ``what`` at the deadline."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except AssertionError:
            raise
        except Exception as e:  # the thing polled is not up yet
            last_error = e
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or check}: {last_error}")


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


class Child:
    """A process the test started; stopped by its own PID (and process group)."""

    def __init__(self, argv: list[str], env: dict[str, str] | None = None, log: Path | None = None):
        self.argv = argv
        self.log_path = log
        out = open(log, "wb") if log else subprocess.DEVNULL
        self.proc = subprocess.Popen(
            argv, env={**os.environ, **(env or {})}, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True, cwd=ROOT,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path else ""

    def stop(self, timeout: float = 5.0) -> None:
        if self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)


def sample_dal(name: str, ports: dict[str, int], log: Path, **env: str) -> Child:
    """The sample DAL (dals/sample) serving ``ports`` (listener name → port)."""
    variables = {f"DGW_LISTENER_{k.upper()}_PORT": str(v) for k, v in ports.items()}
    child = Child([sys.executable, "-m", "dals.sample"], {"DGW_DAL_NAME": name, **variables, **env}, log)
    for port in ports.values():
        wait_for(lambda: port_open(port) or not child.alive(), 15, what=f"DAL {name} port {port}")
        assert child.alive(), child.log()
    return child
