"""Tests' child processes, with the whole log in a failure; ports and polling are testkit's."""

from __future__ import annotations

import sys
from functools import partial
from pathlib import Path

import testkit.procs
from testkit.ports import free_port, port_open
from testkit.procs import ROOT
from testkit.wait import wait_until

# The name the tests have always used for testkit's sync polling helper.
wait_for = wait_until


class Child(testkit.procs.Child):
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
        wait_until(partial(child.serving, port, f"DAL {name}"), 15, what=f"DAL {name} port {port}")
    return child


__all__ = ["ROOT", "Child", "free_port", "port_open", "sample_dal", "wait_for", "wait_until"]
