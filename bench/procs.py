"""Child processes of a benchmark: started by us, measured through /proc, stopped by PID.

Nothing here looks a process up by name: every child is one we started, in its own
session, and it is stopped (TERM, then KILL) through its own process group.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from bench.report import note

T = TypeVar("T")
ROOT = Path(__file__).resolve().parents[1]
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class BenchError(RuntimeError):
    """A benchmark could not run (a child died, a deadline passed); the message says why."""


def raise_open_files_limit() -> int:
    """Soft RLIMIT_NOFILE up to the hard limit: 10,000 streams need as many sockets.
    (The server's own version logs; this one also runs between fork and exec, where
    taking the logging lock could deadlock.)"""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def wait_for(check: Callable[[], T], timeout: float, what: str, interval: float = 0.02) -> T:
    """Poll ``check`` until truthy; BenchError naming ``what`` at the deadline."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except BenchError:
            raise
        except Exception as e:  # not up yet
            last = e
        time.sleep(interval)
    raise BenchError(f"timed out after {timeout:.0f}s waiting for {what}" + (f": {last}" if last else ""))


def scratch_dir(figure: str) -> Path:
    """A fresh directory for one figure's configs and its children's logs."""
    return Path(tempfile.mkdtemp(prefix=f"dgw-bench-{figure}-"))


def finish_scratch_dir(workdir: Path, ok: bool, keep: bool = False) -> None:
    """Remove a run's directory when it went well; otherwise keep it and say where its logs are."""
    if ok and not keep:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        note(f"logs kept in {workdir}")


def rss_kib(pid: int) -> int:
    """Resident set size of ``pid`` (VmRSS), KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise BenchError(f"process {pid} has no VmRSS")


def cpu_times(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of ``pid`` so far, its threads included."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[11]) / _CLOCK_TICKS, int(fields[12]) / _CLOCK_TICKS  # utime, stime


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` so far (its threads included)."""
    return sum(cpu_times(pid))


def http_json(url: str, timeout: float = 10.0) -> dict:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())


def http_text(url: str, timeout: float = 2.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read().decode()


class Child:
    """A process we started, in its own session; ``stop`` ends its process group."""

    def __init__(
        self, argv: list[str], log: Path, env: dict[str, str] | None = None, cwd: Path = ROOT
    ) -> None:
        self.argv = argv
        self.log_path = log
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                argv, env={**os.environ, **(env or {})}, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True, cwd=cwd, preexec_fn=raise_open_files_limit,
            )  # fmt: skip

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def check(self, what: str) -> None:
        if not self.alive():
            raise BenchError(f"{what} exited ({self.proc.returncode}); log {self.log_path}:\n{self.log_tail()}")

    def signal(self, sig: int) -> None:
        if self.alive():
            os.killpg(self.proc.pid, sig)

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


class ServerChild:
    """A ``dgw server`` child on free loopback ports, with its own config dir."""

    def __init__(self, workdir: Path, log_level: str = "INFO") -> None:
        self.workdir = workdir
        self.config_dir = workdir / "shards"
        self.config_dir.mkdir(parents=True, exist_ok=True)
        self.xds_port = free_port()
        self.admin_port = free_port()
        self.log_level = log_level
        self.child: Child | None = None

    @property
    def xds(self) -> str:
        return f"127.0.0.1:{self.xds_port}"

    @property
    def pid(self) -> int:
        assert self.child is not None
        return self.child.pid

    def start(self, timeout: float = 120.0) -> ServerChild:
        self.child = Child(
            [sys.executable, "-m", "dgw.cli", "--log-level", self.log_level, "server",
             "--config-dir", str(self.config_dir), "--xds", self.xds,
             "--admin", f"127.0.0.1:{self.admin_port}"],
            log=self.workdir / "xds_server.log",
        )  # fmt: skip
        wait_for(self._up, timeout, "the dgw server's admin port")
        return self

    def _up(self) -> bool:
        assert self.child is not None
        self.child.check("dgw server")
        return port_open(self.admin_port)

    def write_shard(self, shard: str, text: str) -> None:
        path = self.config_dir / f"{shard}.yaml"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.rename(path)  # atomic, like a careful operator's editor

    def get(self, path: str, timeout: float = 30.0) -> dict:
        return http_json(f"http://127.0.0.1:{self.admin_port}{path}", timeout)

    def stop(self) -> None:
        if self.child is not None:
            self.child.stop()
