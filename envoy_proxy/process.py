"""One Envoy process: started from a bootstrap, asked through its admin API, stopped
TERM → wait → KILL. The only launcher in the project; the sidecar supervises it,
benchmarks and tests run it directly (synchronous callers through ``BlockingEnvoy``).

The process gets a session of its own, so a stop reaches its whole process group and a
Ctrl-C meant for the caller's terminal does not reach it. ``--use-dynamic-base-id`` lets
many Envoys share a host (each picks a free shared-memory base id).

Envoy runs in its work directory, and its admin listens there on a Unix socket,
``NAME.admin.sock``, mode 0600, whatever the bootstrap said: the launcher owns where
admin is, so no Envoy of ours ever has an admin port another local user could reach.
``--admin-address-path`` tells when admin is open. Paths in the bootstrap that are
relative (a listener's socket, ``sockets/NAME``) are relative to the work directory.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path
from typing import Any, BinaryIO

from common.exits import describe_exit
from common.files import open_log, write_private

from .admin import EnvoyAdmin
from .binary import find_envoy
from .errors import AdminUnavailable, EnvoyExited, EnvoyNotReady

DEFAULT_STOP_TIMEOUT_S = 5.0
_ADMIN_TIMEOUT_S = 2.0
_READY_POLL_S = 0.05


def admin_socket(workdir: Path, name: str = "envoy") -> Path:
    """Where the Envoy ``name`` started in ``workdir`` has its admin socket."""
    return workdir.absolute() / f"{name}.admin.sock"


class EnvoyProcess:
    """One run of Envoy with ``bootstrap``; its files are ``WORKDIR/NAME.bootstrap.json``,
    ``NAME.log`` (stdout and stderr, appended to, 0600), ``NAME.admin.sock`` and
    ``NAME.admin-address``.

    Single use: ``start`` once, ``stop`` once (a supervisor makes a new one per restart).
    The binary is looked up when the object is made, so a missing Envoy is an
    ``EnvoyNotFound`` before anything starts.
    """

    def __init__(
        self,
        bootstrap: dict[str, Any],
        workdir: Path,
        *,
        name: str = "envoy",
        binary: str | None = None,
        log_level: str = "warning",
        concurrency: int | None = None,
        drain_time_s: int = 1,
    ) -> None:
        self.binary = find_envoy(binary)
        self.workdir = workdir.absolute()  # Envoy's cwd: every path we give it is absolute
        self.name = name
        self.admin_socket_path = admin_socket(self.workdir, name)
        # Admin on the socket, owner-only, whatever the caller's bootstrap said.
        self.bootstrap = {**bootstrap, "admin": {"address": {"pipe": {"path": self.admin_socket_path.name,
                                                                       "mode": 0o600}}}}  # fmt: skip
        self.bootstrap_path = self.workdir / f"{name}.bootstrap.json"
        self.log_path = self.workdir / f"{name}.log"
        self.admin_address_path = self.workdir / f"{name}.admin-address"
        self._options = ["--log-level", log_level, "--drain-time-s", str(drain_time_s)]
        if concurrency is not None:
            self._options += ["--concurrency", str(concurrency)]
        self._proc: asyncio.subprocess.Process | None = None
        self._admin: EnvoyAdmin | None = None
        self.log_offset = 0  # where this run's lines begin in the (shared) log file

    @property
    def node_id(self) -> str:
        return str(self.bootstrap["node"]["id"])

    @property
    def shard(self) -> str:
        """The bootstrap's ``node.cluster``: the shard a gateway Envoy serves."""
        return str(self.bootstrap["node"]["cluster"])

    def argv(self) -> list[str]:
        return [
            self.binary,
            "-c", str(self.bootstrap_path),
            "--use-dynamic-base-id",
            "--admin-address-path", str(self.admin_address_path),
            *self._options,
        ]  # fmt: skip

    async def start(self) -> None:
        """Write the bootstrap and start Envoy (it is not ready yet: see ``wait_ready``)."""
        if self._proc is not None:
            raise RuntimeError(f"envoy {self.name} was already started")
        with self._prepare_files() as out:
            self.log_offset = out.tell()
            self._proc = await asyncio.create_subprocess_exec(
                *self.argv(),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
                cwd=self.workdir,
            )
        self._admin = EnvoyAdmin(self.admin_socket_path, self.admin_address_path, _ADMIN_TIMEOUT_S)

    def _prepare_files(self) -> BinaryIO:
        """Bootstrap written, a stale admin address and socket gone, the log open for
        appending (small local files: not worth a thread). Nothing here follows a
        symbolic link, and nothing is readable by others."""
        self.workdir.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_private(self.bootstrap_path, json.dumps(self.bootstrap, indent=1).encode())
        self.admin_address_path.unlink(missing_ok=True)
        self.admin_socket_path.unlink(missing_ok=True)
        return open_log(self.log_path)

    def _started(self) -> asyncio.subprocess.Process:
        if self._proc is None:
            raise RuntimeError(f"envoy {self.name} has not been started")
        return self._proc

    @property
    def pid(self) -> int:
        return self._started().pid

    @property
    def returncode(self) -> int | None:
        """None while it runs (and before it is started)."""
        return None if self._proc is None else self._proc.returncode

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    @property
    def admin(self) -> EnvoyAdmin:
        if self._admin is None:
            raise AdminUnavailable(f"envoy {self.name} has not been started")
        return self._admin

    @property
    def admin_address(self) -> str | None:
        """Admin's socket path once Envoy has opened it."""
        return None if self._admin is None else self._admin.address

    async def wait(self) -> int:
        """Until the process ends; its return code (−N for signal N)."""
        return await self._started().wait()

    async def wait_ready(self, timeout: float) -> None:
        """Poll ``/ready`` until LIVE; EnvoyExited if it ends first, EnvoyNotReady at the
        deadline (both with the log's last lines)."""
        self._started()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        last = "no answer yet"
        while True:
            if self.returncode is not None:
                raise EnvoyExited(f"envoy {self.name} {self.exit_text()}; log {self.log_path}:\n{self.log_tail()}")
            try:
                if await self.admin.ready():
                    return
                last = "/ready is not LIVE"
            except AdminUnavailable as e:
                last = str(e)
            if loop.time() >= deadline:
                raise EnvoyNotReady(
                    f"envoy {self.name} not ready after {timeout:g}s ({last}); "
                    f"log {self.log_path}:\n{self.log_tail()}"
                )
            await asyncio.sleep(_READY_POLL_S)

    def exit_text(self) -> str:
        """``exited with code 137 (SIGKILL)``, or ``is running``."""
        code = self.returncode
        return "is running" if code is None else describe_exit(code)

    def log_tail(self, chars: int = 3000) -> str:
        """The end of what this run wrote to the log."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(self.log_offset, f.tell() - chars))
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    async def stop(self, timeout: float = DEFAULT_STOP_TIMEOUT_S) -> int | None:
        """TERM its process group, wait up to ``timeout``; then KILL and wait as long
        again. Returns its return code (None only if it outlived even KILL). Safe to
        call on a process that already ended, or that was never started."""
        proc = self._proc
        if proc is not None:
            for sig in (signal.SIGTERM, signal.SIGKILL):
                if proc.returncode is not None:
                    break
                try:
                    os.killpg(proc.pid, sig)
                except ProcessLookupError:
                    pass  # ended on its own; wait() below reaps it
                try:
                    await asyncio.wait_for(proc.wait(), timeout)
                except TimeoutError:
                    continue
        if self._admin is not None:
            await self._admin.close()
        return self.returncode
