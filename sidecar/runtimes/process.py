"""DAL instances as local processes: the runtime used when no Docker engine answers.

The same spec runs as ``container_cmd`` with the spec's env on the host (and nothing
of the sidecar's environment), as the sidecar's user or ``--dal-user``'s (``run_as``);
health checks run the same way, with Docker's semantics (interval, timeout, retries,
start_period).
Each DAL gets its own process group, and only groups this runtime started (recorded
with their start time, so a recycled PID is never mistaken for ours) are signalled.
Records survive the agent in ``processes.json``: a restarted agent adopts the
processes it finds alive instead of starting them again.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from common.digests import DigestCache, DigestError, command_files
from common.files import open_log, write_private
from dgw_api.health import Health
from xds_server.deploy.artifacts import Pin

from ..log import EventLog, tail_lines
from ..plan import Observed, State
from ..spec import DalSpec, HealthSpec
from .base import DalRunError, Notify, Runtime
from .run_as import RunAs, dal_environment

_STATE_FILE = "processes.json"
_POLL_S = 0.05
_PROBE_OUTPUT_CHARS = 400


@dataclass
class _Record:
    dal: str
    pid: int
    spec_hash: str
    ports: dict[str, int]
    started_at: float
    proc_start: str  # /proc/<pid>/stat start time: tells our process from a reused PID
    log_path: str
    log_offset: int  # where this run's output starts in the log file
    env: dict[str, str]
    healthcheck: dict[str, Any] | None
    exit_code: int | None = None
    exited: bool = False
    error: str | None = None

    @property
    def ref(self) -> str:
        return f"pid:{self.pid}"


@dataclass
class _Live:
    """What only this agent process knows about a record: its child and its tasks."""

    child: asyncio.subprocess.Process | None = None
    health: Health = Health.STARTING
    health_output: str = ""
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    pidfd: int | None = None


class ProcessRuntime(Runtime):
    name = "process"
    network_mode = "process"

    def __init__(self, state_dir: Path, *, stop_grace_s: float, log: EventLog, run_as: RunAs | None = None):
        self._dir = state_dir
        self._run_as = run_as  # None: as the sidecar's user
        self._logs = state_dir / "logs"
        self._stop_grace = stop_grace_s
        self._log = log
        self._records: dict[str, _Record] = {}  # by dal
        self._live: dict[str, _Live] = {}  # by ref
        self._notify: Notify = lambda reason: None
        self._digests = DigestCache()

    # --- lifecycle -----------------------------------------------------------------

    async def start(self, notify: Notify) -> None:
        self._notify = notify
        self._logs.mkdir(mode=0o700, parents=True, exist_ok=True)
        for rec in self._load():
            self._records[rec.dal] = rec
            if rec.exited:
                continue
            if _alive(rec.pid, rec.proc_start):
                self._adopt(rec)
            else:
                rec.exited, rec.error = True, "exited while the agent was away"
        self._save()

    async def close(self) -> None:
        for live in list(self._live.values()):
            self._forget_live(live)
        self._live.clear()

    # --- observe -------------------------------------------------------------------

    async def observe(self) -> list[Observed]:
        out = []
        for rec in self._records.values():
            live = self._live.get(rec.ref)
            running = not rec.exited and live is not None
            health = Health.NONE
            if live is not None and running and rec.healthcheck is not None:
                health = live.health
            out.append(
                Observed(
                    dal=rec.dal,
                    ref=rec.ref,
                    spec_hash=rec.spec_hash,
                    state=State.RUNNING if running else State.EXITED,
                    health=health,
                    ports=dict(rec.ports),
                    exit_code=rec.exit_code,
                    started_at=rec.started_at,
                    error=rec.error,
                )
            )
        return out

    # --- act -----------------------------------------------------------------------

    async def create(self, spec: DalSpec) -> None:
        old = self._records.get(spec.name)
        if old is not None:
            await self._stop(old)
            self._drop(old)
        await self._spawn(spec)

    async def start_instance(self, observed: Observed, spec: DalSpec) -> None:
        await self.create(spec)

    async def restart(self, observed: Observed, spec: DalSpec) -> None:
        await self.create(spec)

    async def remove(self, observed: Observed) -> None:
        rec = self._by_ref(observed.ref)
        if rec is None:
            return
        await self._stop(rec)
        self._drop(rec)

    async def build_digest(self, pin: Pin, command: tuple[str, ...] | None) -> str:
        """The digest of the files ``command`` runs (``common.digests``)."""
        if pin.kind != "files":
            raise DalRunError(f"it is pinned to {pin.kind} {pin.source}; this host runs DALs as local "
                              "processes and cannot check an image (run it with --runtime docker)")  # fmt: skip
        files = command_files(command or ())
        if not files:
            raise DalRunError(f"its container_cmd {' '.join(command or ())[:80]!r} names no file to check")
        try:
            return await asyncio.to_thread(self._digests.files_digest, files)
        except DigestError as e:
            raise DalRunError(str(e)) from None

    async def logs(self, observed: Observed, lines: int) -> list[str]:
        rec = self._by_ref(observed.ref)
        if rec is None:
            return []
        return await asyncio.to_thread(tail_lines, Path(rec.log_path), lines, rec.log_offset)

    # --- processes -----------------------------------------------------------------

    async def _spawn(self, spec: DalSpec) -> None:
        if not spec.command:
            raise DalRunError(f"dal {spec.name} has no container_cmd to run")
        log_path = self._logs / f"{spec.name}.log"
        env = dal_environment(spec.env_dict, self._run_as)
        try:
            out = open_log(log_path)  # a local append: too quick to be worth a thread
        except OSError as e:
            raise DalRunError(f"cannot open the log {log_path}: {e.strerror or e} (a symbolic link "
                              "there is refused)") from None
        with out:
            out.write(f"--- dgw: starting {spec.name} spec={spec.spec_hash}\n".encode())
            out.flush()
            offset = out.tell()
            try:
                child = await asyncio.create_subprocess_exec(
                    *spec.command,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=out,
                    stderr=asyncio.subprocess.STDOUT,
                    env=env,
                    start_new_session=True,  # its own process group: we signal the group
                    **(self._run_as.popen() if self._run_as else {}),
                )
            except FileNotFoundError:
                raise DalRunError(
                    f"cannot run {spec.command[0]!r}: no such file or directory; check "
                    "container_cmd"
                ) from None
            except PermissionError:
                who = f" as {self._run_as.name} (--dal-user)" if self._run_as else ""
                raise DalRunError(
                    f"cannot run {spec.command[0]!r}{who}: permission denied; check container_cmd"
                ) from None
        rec = _Record(
            dal=spec.name,
            pid=child.pid,
            spec_hash=spec.spec_hash,
            ports=spec.host_ports,
            started_at=time.time(),
            proc_start=_proc_start(child.pid) or "",
            log_path=str(log_path),
            log_offset=offset,
            env=spec.env_dict,
            healthcheck=asdict(spec.healthcheck) if spec.healthcheck else None,
        )
        self._records[spec.name] = rec
        live = _Live(child=child)
        self._live[rec.ref] = live
        live.tasks.append(asyncio.create_task(self._wait_child(rec, child)))
        self._watch_health(rec, live, first_after=None)
        self._save()

    def _adopt(self, rec: _Record) -> None:
        live = _Live()
        self._live[rec.ref] = live
        try:
            live.pidfd = os.pidfd_open(rec.pid)
        except OSError:
            rec.exited, rec.error = True, "exited while the agent was away"
            del self._live[rec.ref]
            return
        asyncio.get_running_loop().add_reader(live.pidfd, self._adopted_exit, rec)
        # An adopted DAL's health is not known yet: check at once, not after interval.
        self._watch_health(rec, live, first_after=0.0)
        self._log.info("dal_adopted", dal=rec.dal, pid=rec.pid, spec=rec.spec_hash)

    def _adopted_exit(self, rec: _Record) -> None:
        live = self._live.get(rec.ref)
        if live is not None:
            self._forget_live(live)
            del self._live[rec.ref]
        _killpg_quietly(rec.pid)
        if not rec.exited:
            # Not our child: its exit status went to its new parent.
            rec.exited, rec.exit_code = True, None
            self._save()
            self._notify(f"process exited dal={rec.dal}")

    async def _wait_child(self, rec: _Record, child: asyncio.subprocess.Process) -> None:
        code = await child.wait()
        # Like a container's PID 1: when the main process goes, its group goes too,
        # so no orphan keeps the DAL's ports.
        _killpg_quietly(rec.pid)
        # A signal death reads like Docker's: 128 + signal number (SIGKILL → 137).
        rec.exit_code = 128 - code if code < 0 else code
        rec.exited = True
        live = self._live.pop(rec.ref, None)
        if live is not None:
            self._forget_live(live, keep=asyncio.current_task())
        if self._records.get(rec.dal) is rec:
            self._save()
        self._notify(f"process exited dal={rec.dal} code={rec.exit_code}")

    async def _stop(self, rec: _Record) -> None:
        live = self._live.pop(rec.ref, None)
        if live is not None:
            self._forget_live(live)
        if rec.exited or not _alive(rec.pid, rec.proc_start):
            return
        for sig, wait_s in ((signal.SIGTERM, self._stop_grace), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(rec.pid, sig)
            except ProcessLookupError:
                break
            if await _wait_gone(rec, live, wait_s):
                break
        rec.exited = True

    def _drop(self, rec: _Record) -> None:
        if self._records.get(rec.dal) is rec:
            del self._records[rec.dal]
        self._save()

    def _forget_live(self, live: _Live, keep: asyncio.Task[None] | None = None) -> None:
        for task in live.tasks:
            if task is not keep:
                task.cancel()
        if live.pidfd is not None:
            asyncio.get_running_loop().remove_reader(live.pidfd)
            os.close(live.pidfd)
            live.pidfd = None

    def _by_ref(self, ref: str) -> _Record | None:
        return next((r for r in self._records.values() if r.ref == ref), None)

    # --- health checks -------------------------------------------------------------

    def _watch_health(self, rec: _Record, live: _Live, first_after: float | None) -> None:
        if rec.healthcheck is None:
            return
        hc = HealthSpec(**{**rec.healthcheck, "test": tuple(rec.healthcheck["test"])})
        live.tasks.append(asyncio.create_task(self._health_loop(rec, live, hc, first_after)))

    def _probe_options(self) -> dict[str, Any]:
        return self._run_as.popen() if self._run_as else {}

    async def _health_loop(
        self, rec: _Record, live: _Live, hc: HealthSpec, first_after: float | None
    ) -> None:
        """Docker's health state machine: starting until the first success (failures
        inside start_period do not count), then healthy, and unhealthy after
        ``retries`` consecutive failures."""
        env = dal_environment(rec.env, self._run_as)
        started = time.monotonic() if first_after is None else None
        failures = 0
        delay = hc.interval_s if first_after is None else first_after
        while True:
            await asyncio.sleep(delay)
            delay = hc.interval_s
            ok, output = await _probe(hc, env, self._probe_options())
            live.health_output = output
            before = live.health
            if ok:
                failures = 0
                live.health = Health.HEALTHY
                started = None
            elif started is not None and time.monotonic() - started < hc.start_period_s:
                pass
            else:
                failures += 1
                if failures >= hc.retries:
                    live.health = Health.UNHEALTHY
            if live.health is not before:
                self._notify(f"health_status: {live.health.value} dal={rec.dal}")

    # --- persistence ---------------------------------------------------------------

    def _load(self) -> list[_Record]:
        path = self._dir / _STATE_FILE
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as e:
            self._log.warning("process_state_unreadable", file=str(path), error=str(e))
            return []
        out = []
        for item in data:
            try:
                out.append(_Record(**item))
            except TypeError:
                self._log.warning("process_state_record_skipped", file=str(path))
        return out

    def _save(self) -> None:
        # Records hold the DALs' env: readable by the agent's user only.
        write_private(self._dir / _STATE_FILE, json.dumps([asdict(r) for r in self._records.values()], indent=1).encode())


async def _probe(hc: HealthSpec, env: dict[str, str], options: dict[str, Any]) -> tuple[bool, str]:
    try:
        proc = await asyncio.create_subprocess_exec(
            *hc.argv(),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=env,
            start_new_session=True,
            **options,
        )
    except OSError as e:
        return False, f"cannot run health check {hc.argv()[0]!r}: {e.strerror or e}"
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), hc.timeout_s)
    except TimeoutError:
        _killpg_quietly(proc.pid)
        await proc.wait()
        return False, f"health check timed out after {hc.timeout_s:g}s"
    except asyncio.CancelledError:
        if proc.returncode is None:  # once reaped, its PID may belong to someone else
            _killpg_quietly(proc.pid)
        raise
    text = out.decode("utf-8", "replace").strip()[-_PROBE_OUTPUT_CHARS:]
    return proc.returncode == 0, text


def _killpg_quietly(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _proc_stat(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after it.
    return raw[raw.rfind(")") + 2 :].split()


def _proc_start(pid: int) -> str | None:
    fields = _proc_stat(pid)
    return fields[19] if fields and len(fields) > 19 else None


def _alive(pid: int, proc_start: str) -> bool:
    """Whether ``pid`` is still the process we started (not a zombie, not reused)."""
    fields = _proc_stat(pid)
    if not fields or fields[0] in ("Z", "X"):
        return False
    return not proc_start or (len(fields) > 19 and fields[19] == proc_start)


async def _wait_gone(rec: _Record, live: _Live | None, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if live is not None and live.child is not None and live.child.returncode is not None:
            return True
        if not _alive(rec.pid, rec.proc_start):
            return True
        await asyncio.sleep(_POLL_S)
    return False

