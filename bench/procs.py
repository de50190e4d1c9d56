"""A benchmark's child processes: measured through /proc, the ``dgw server`` child, and
failures as BenchError. Starting and stopping children by PID is ``testkit.procs``'s.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import shutil
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, TypeVar

import testkit.procs
from bench.report import note
from testkit.ports import free_port, port_open
from testkit.procs import ChildExited
from testkit.wait import WaitTimeout, wait_until

T = TypeVar("T")
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class BenchError(RuntimeError):
    """A benchmark could not run (a child died, a deadline passed); the message says why."""


def wait_for(check: Callable[[], T], timeout: float, what: str, interval: float = 0.02) -> T:
    """testkit's ``wait_until``, failing with a BenchError (which the CLI prints as is)."""
    try:
        return wait_until(check, timeout, interval, what, fatal=(BenchError, ChildExited))
    except (WaitTimeout, ChildExited) as e:
        raise BenchError(str(e)) from None


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


def http_json(url: str, timeout: float = 10.0, token: str | None = None) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout) as r:
        body: dict[str, Any] = json.loads(r.read())
        return body


def http_text(url: str, timeout: float = 2.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        text: str = r.read().decode()
        return text


class Child(testkit.procs.Child):
    """A benchmark's child: its exit is a BenchError, which the CLI reports without a trace."""

    def check(self, what: str) -> None:
        try:
            super().check(what)
        except ChildExited as e:
            raise BenchError(str(e)) from None


class ServerChild:
    """A ``dgw server`` child on free loopback ports, with its own config dir."""

    def __init__(self, workdir: Path, log_level: str = "INFO", tls: bool = False, store: str | None = None,
                 replica_id: str | None = None) -> None:  # fmt: skip
        self.workdir = workdir
        self.tls = tls  # mTLS control port (its CA in the data dir), else --insecure
        self.store = store  # etcd://...: one replica of several (else SQLite in the data dir)
        self.replica_id = replica_id
        self.config_dir = workdir / "shards"
        self.config_dir.mkdir(parents=True, exist_ok=True)
        self.xds_port = free_port()
        self.admin_port = free_port()
        self.log_level = log_level
        self.data_dir = workdir / "data"
        # The first start's admin token; a replica's is the first replica's (tokens are shared).
        self.token_file = self.data_dir / "admin.token"
        self.child: Child | None = None

    @property
    def xds(self) -> str:
        return f"127.0.0.1:{self.xds_port}"

    @property
    def pid(self) -> int:
        assert self.child is not None
        return self.child.pid

    def start(self, timeout: float = 120.0) -> ServerChild:
        security = ["--join", f"127.0.0.1:{free_port()}"] if self.tls else ["--insecure"]
        if self.store is not None:
            security += ["--store", self.store, "--replica-id", self.replica_id or self.workdir.name]
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.child = Child(
            [sys.executable, "-m", "dgw.cli", "--log-level", self.log_level, "server", *security,
             "--config-dir", str(self.config_dir), "--xds", self.xds,
             "--admin", f"127.0.0.1:{self.admin_port}", "--data-dir", str(self.data_dir)],
            log=self.workdir / "xds_server.log",
        )  # fmt: skip
        wait_for(self._up, timeout, "the dgw server's admin port")
        return self

    def _up(self) -> bool:
        assert self.child is not None
        self.child.check("dgw server")
        return port_open(self.admin_port)

    @property
    def ca_dir(self) -> Path:
        """Where a server with ``tls`` keeps its CA (the default: in its data dir)."""
        return self.data_dir / "ca"

    def write_shard(self, shard: str, text: str) -> None:
        path = self.config_dir / f"{shard}.yaml"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.rename(path)  # atomic, like a careful operator's editor

    @property
    def token(self) -> str:
        """The admin token the server made on its first start (the admin API needs one)."""
        return self.token_file.read_text().strip()

    def get(self, path: str, timeout: float = 30.0) -> dict[str, Any]:
        return http_json(f"http://127.0.0.1:{self.admin_port}{path}", timeout, self.token)

    def put_shard(self, shard: str, text: str, if_match: int, timeout: float = 30.0) -> int:
        """Store the shard's text through the operators' API; its new version."""
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.admin_port}/v1/shards/{shard}",
            data=json.dumps({"yaml": text, "message": "bench"}).encode(), method="PUT",
            headers={"content-type": "application/json", "If-Match": f'"{if_match}"',
                     "Authorization": f"Bearer {self.token}"},
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as r:
                version: int = json.loads(r.read())["version"]
                return version
        except urllib.error.HTTPError as e:
            raise BenchError(f"PUT /v1/shards/{shard}: {e.code} {e.read()[:500]!r}") from None

    def post_report(self, report: dict[str, Any]) -> bool:
        """A node report as a sidecar sends it over HTTP (``POST /v1/reports``)."""
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.admin_port}/v1/reports", data=json.dumps(report).encode(),
            headers={"content-type": "application/json", "Authorization": f"Bearer {self.token}"},
            method="POST",
        )  # fmt: skip
        with urllib.request.urlopen(request, timeout=5) as r:
            return bool(r.status == 200)

    def put_batch(self, texts: dict[str, tuple[str, int]], timeout: float = 60.0) -> dict[str, int]:
        """Store several shards' texts in one request (``POST /v1/batch``); their new versions."""
        changes = [{"shard": s, "yaml": text, "base_version": base} for s, (text, base) in texts.items()]
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.admin_port}/v1/batch",
            data=json.dumps({"changes": changes, "message": "bench"}).encode(), method="POST",
            headers={"content-type": "application/json", "Authorization": f"Bearer {self.token}"},
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as r:
                stored = json.loads(r.read())["shards"]
        except urllib.error.HTTPError as e:
            raise BenchError(f"POST /v1/batch: {e.code} {e.read()[:500]!r}") from None
        return {shard: int(v["version"]) for shard, v in stored.items()}

    def stop(self) -> None:
        if self.child is not None:
            self.child.stop()


Handler = Callable[..., "dict[str, Any] | Awaitable[dict[str, Any]]"]


async def serve_pipe(conn: Connection, handlers: dict[str, Handler], close: Callable[[], Awaitable[None]]) -> None:
    """A load-generator process's loop: each ``(command, args)`` from the orchestrator
    answered with one dict, until ``stop`` (answered once ``close`` is done)."""
    loop = asyncio.get_running_loop()
    try:
        while True:
            command, args = await loop.run_in_executor(None, conn.recv)
            if command == "stop":
                await close()
                conn.send({"stopped": True})
                return
            handler = handlers.get(command)
            if handler is None:
                conn.send({"error": f"unknown command {command!r}"})
                continue
            reply = handler(**args)
            conn.send(await reply if inspect.isawaitable(reply) else reply)
    finally:
        await close()
