"""The agent's Envoy: started from the shard's bootstrap, restarted with backoff when
it dies, observed through its admin API.

Its configuration comes over ADS from the xds_server, so a restarted Envoy is back with
its config as soon as it reconnects. ``observe()`` asks admin whether Envoy is live,
has accepted (ACKed) its config and which ports its listeners hold; ``status()`` only
reads what the last observation found.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.backoff import backoff_delay
from common.exits import describe_exit
from envoy_proxy import AdminUnavailable, EnvoyNotFound, EnvoyProcess
from envoy_proxy.stats import Sample

from .log import EventLog, tail_lines
from .runtimes.base import Notify

_BACKOFF_BASE_S = 0.25
_RESET_AFTER_S = 10.0  # a run this long counts as healthy: the next crash starts the backoff afresh
_STOP_WAIT_S = 5.0
_STATS = r"^(listener_manager\.lds|cluster_manager\.cds)\.update_(success|rejected)$"
_SUBSCRIPTIONS = ("cluster_manager.cds", "listener_manager.lds")


@dataclass(frozen=True)
class EnvoyStatus:
    running: bool = False
    live: bool = False  # /ready says LIVE: initial config fetched, serving
    acked: bool = False  # accepted CDS and LDS, and the last update was not rejected
    ports: frozenset[int] = field(default_factory=frozenset)  # listener ports it holds
    message: str = ""

    @property
    def state(self) -> str:
        if not self.running:
            return "down"
        if self.live and self.acked:
            return "ready"
        return "starting"


@dataclass(frozen=True)
class Acceptance:
    """What one Envoy run has done with its CDS and LDS updates, from its stat counters.

    Envoy keeps no "last update rejected" flag, only counters, so a NACK is seen as a
    rise in ``update_rejected`` between two observations, and cleared by a later rise
    in ``update_success`` (a NACKed update leaves the old config in place).
    """

    counts: Mapping[str, int] = field(default_factory=dict)
    nacked: bool = False

    def after(self, counts: Mapping[str, int]) -> Acceptance:
        nacked = self.nacked
        for kind in _SUBSCRIPTIONS:
            ok, bad = f"{kind}.update_success", f"{kind}.update_rejected"
            if counts.get(ok, 0) > self.counts.get(ok, 0):
                nacked = False
            if counts.get(bad, 0) > self.counts.get(bad, 0):
                nacked = True
        return Acceptance(dict(counts), nacked)

    @property
    def acked(self) -> bool:
        return not self.nacked and all(
            self.counts.get(f"{kind}.update_success", 0) > 0 for kind in _SUBSCRIPTIONS
        )


class EnvoySupervisor:
    """Keeps one ``EnvoyProcess`` running. The binary is looked up when this is made:
    EnvoyNotFound then, not at the first start."""

    def __init__(
        self,
        *,
        bootstrap: dict[str, Any],
        state_dir: Path,
        binary: str | None,
        log_level: str,
        backoff_max_s: float,
        crash_log_lines: int,
        log: EventLog,
    ) -> None:
        self._bootstrap = bootstrap
        self._dir = state_dir
        self._binary = binary
        self._log_level = log_level
        self._backoff_max = backoff_max_s
        self._crash_lines = crash_log_lines
        self._log = log
        self._notify: Notify = lambda reason: None
        self._proc = self._next_process()
        self._acceptance = Acceptance()
        self._status = EnvoyStatus(message="envoy is not running")
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._started_at = 0.0

    def _next_process(self) -> EnvoyProcess:
        return EnvoyProcess(
            self._bootstrap, self._dir, binary=self._binary, log_level=self._log_level
        )

    @property
    def bootstrap_path(self) -> Path:
        return self._proc.bootstrap_path

    @property
    def log_path(self) -> Path:
        return self._proc.log_path

    @property
    def admin_address(self) -> str | None:
        return self._proc.admin_address

    async def start(self, notify: Notify) -> None:
        """Keep Envoy running from now on; ``notify`` hears of its starts and exits."""
        self._notify = notify
        self._task = asyncio.create_task(self._supervise(), name="envoy")

    async def _supervise(self) -> None:
        attempts = 0
        while not self._stopping:
            proc = self._proc
            started = time.monotonic()
            code: int | None = None
            try:
                await proc.start()
            except OSError as e:
                self._log.error("envoy_start_failed", binary=proc.binary, error=str(e))
            else:
                self._started_at = time.time()
                self._log.info("envoy_started", pid=proc.pid, bootstrap=str(proc.bootstrap_path))
                self._notify("envoy started")
                code = await proc.wait()
            await proc.stop()  # it has ended: this only lets go of its admin session
            if self._stopping:
                return
            if time.monotonic() - started > _RESET_AFTER_S:
                attempts = 0
            delay = backoff_delay(attempts, _BACKOFF_BASE_S, self._backoff_max)
            attempts += 1
            tail = await asyncio.to_thread(
                tail_lines, proc.log_path, self._crash_lines, proc.log_offset
            )
            self._log.error(
                "envoy_exited", exit=describe_exit(code), restart_in=delay, last_lines=" | ".join(tail)
            )
            self._notify("envoy exited")
            await asyncio.sleep(delay)
            try:
                self._proc = self._next_process()
            except EnvoyNotFound as e:
                self._log.error("envoy_start_failed", error=str(e))
                return
            self._acceptance = Acceptance()

    def status(self) -> EnvoyStatus:
        """What the last ``observe()`` found; changes nothing."""
        return self._status

    async def observe(self) -> EnvoyStatus:
        """Ask Envoy how it is; the answer becomes ``status()``."""
        self._status = await self._look()
        return self._status

    async def _look(self) -> EnvoyStatus:
        proc = self._proc
        if not proc.running:
            return EnvoyStatus(message="envoy is not running")
        if proc.admin_address is None:
            return EnvoyStatus(running=True, message="envoy is starting (no admin yet)")
        try:
            live = await proc.admin.ready()
            stats = await proc.admin.stats(_STATS)
            ports = await proc.admin.listener_ports()
        except AdminUnavailable as e:
            return EnvoyStatus(running=True, message=str(e))
        if proc is not self._proc:
            return EnvoyStatus(message="envoy is restarting")
        self._acceptance = self._acceptance.after(stats.numbers)
        acked = self._acceptance.acked
        return EnvoyStatus(
            running=True,
            live=live,
            acked=acked,
            ports=ports,
            message="" if acked else "envoy has not accepted its config yet",
        )

    async def sample(self) -> tuple[str, Sample] | None:
        """The running Envoy's reported stats, with an epoch naming that process (a
        restart resets its counters); None while none runs. Raises AdminUnavailable."""
        proc = self._proc
        if not proc.running or proc.admin_address is None:
            return None
        sample = await proc.admin.sample()
        return f"{proc.pid}@{self._started_at:.3f}", sample

    async def drain(self) -> None:
        """Stop taking new connections gracefully (before the process is stopped)."""
        if not self._proc.running:
            return
        try:
            await self._proc.admin.post("/drain_listeners?graceful")
        except AdminUnavailable:
            pass

    async def stop(self) -> None:
        self._stopping = True
        await self._proc.stop(_STOP_WAIT_S)
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._log.info("envoy_stopped")
