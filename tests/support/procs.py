"""Loopback ports, polling with a deadline, and child processes killed by PID.

The process and port helpers are the benchmarks' own (``bench.procs``); tests add
assertion-style polling and a ``Child`` that shows its whole log in a failure.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import bench.procs
from bench.procs import ROOT, free_port, port_open

T = TypeVar("T")


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


class Child(bench.procs.Child):
    """A process the test started; stopped by its own PID (and process group)."""

    def __init__(self, argv: list[str], env: dict[str, str] | None = None, *, log: Path):
        super().__init__(argv, log, env)

    def log(self) -> str:
        return self.log_tail(chars=1_000_000)


def sample_dal(name: str, ports: dict[str, int], log: Path, **env: str) -> Child:
    """The sample DAL (dals/sample) serving ``ports`` (listener name → port)."""
    variables = {f"DGW_LISTENER_{k.upper()}_PORT": str(v) for k, v in ports.items()}
    child = Child([sys.executable, "-m", "dals.sample"], {"DGW_DAL_NAME": name, **variables, **env}, log=log)
    for port in ports.values():
        wait_for(lambda: port_open(port) or not child.alive(), 15, what=f"DAL {name} port {port}")
        assert child.alive(), child.log()
    return child


__all__ = ["ROOT", "Child", "free_port", "port_open", "sample_dal", "wait_for"]
