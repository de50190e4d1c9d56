"""Carrying a plan out: one task per DAL with changes, each action an exhaustive
``match`` on the plan's action kinds.

The executor also remembers what acting taught it: the failure history the plan's
backoff reads (``history``) and the last failed action's message per DAL
(``errors``, shown in the report).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Collection, Iterable

from common.exits import describe_exit

from .log import EventLog
from .plan import (
    Change,
    Create,
    Failures,
    Observed,
    Recreate,
    Remove,
    Restart,
    Start,
    State,
    record_attempt,
)
from .runtimes.base import DalRunError, Runtime
from .spec import DalSpec


class Executor:
    def __init__(
        self,
        runtime: Runtime,
        log: EventLog,
        *,
        crash_log_lines: int,
        clock: Callable[[], float],
        on_done: Callable[[str], None],
    ):
        self._runtime = runtime
        self._log = log
        self._crash_log_lines = crash_log_lines
        self._clock = clock
        self._on_done = on_done
        self.history: dict[str, Failures] = {}
        self.errors: dict[str, str] = {}  # dal → why its last action failed
        self._busy: dict[str, asyncio.Task[None]] = {}  # dal → its actions in flight
        self._done_since: set[str] = set()

    def begin_observe(self) -> set[str]:
        """Call before observing; returns the DALs busy now (see ``unsure``)."""
        self._done_since.clear()
        return set(self._busy)

    def unsure(self, busy_before: set[str]) -> set[str]:
        """DALs whose actions were in flight while observing: what was seen of them
        may predate those actions (a create finishing mid-observe would otherwise be
        done twice), so they sit this pass out. Their completion wakes a fresh one."""
        return busy_before | self._done_since | set(self._busy)

    def healed(self, observed: Iterable[Observed]) -> None:
        """Forget the failure messages of DALs that now run well."""
        for o in observed:
            if o.live and o.health.serving:
                self.errors.pop(o.dal, None)

    def forget(self, keep: Collection[str]) -> None:
        """Drop what is remembered of DALs that are gone (not in ``keep``)."""
        for dal in set(self.history) - set(keep):
            del self.history[dal]
        for dal in set(self.errors) - set(keep):
            del self.errors[dal]

    def launch(self, changes: Iterable[Change]) -> None:
        by_dal: dict[str, list[Change]] = {}
        for a in changes:
            by_dal.setdefault(a.dal, []).append(a)
        for dal, actions in by_dal.items():
            task = asyncio.create_task(self._act_all(actions), name=f"act-{dal}")
            self._busy[dal] = task
            task.add_done_callback(functools.partial(self._finished, dal))

    async def settled(self) -> None:
        """Wait for the actions in flight (shutdown, tests)."""
        while self._busy:
            await asyncio.gather(*self._busy.values(), return_exceptions=True)

    def _finished(self, dal: str, _: asyncio.Task[None]) -> None:
        self._busy.pop(dal, None)
        self._done_since.add(dal)
        # Look again at once: what was just done changed what there is to observe.
        self._on_done(f"actions on {dal} done")

    async def _act_all(self, actions: list[Change]) -> None:
        for a in actions:
            await self._act(a)

    def _attempted(self, dal: str, spec: DalSpec) -> None:
        self.history = record_attempt(self.history, dal, spec.spec_hash, self._clock())

    async def _act(self, a: Change) -> None:
        log = self._log.bind(dal=a.dal)
        try:
            match a:
                case Create(spec=spec):
                    log.info("dal_create", reason=a.reason, spec=spec.spec_hash, ports=_ports(spec))
                    await self._runtime.create(spec)
                case Recreate(spec=spec, observed=obs):
                    log.info(
                        "dal_recreate", reason=a.reason, old=obs.spec_hash, new=spec.spec_hash,
                        ports=_ports(spec),
                    )
                    await self._runtime.remove(obs)
                    await self._runtime.create(spec)
                case Start(spec=spec, observed=obs):
                    log.info("dal_start", reason=a.reason)
                    self._attempted(a.dal, spec)
                    await self._runtime.start_instance(obs, spec)
                case Restart(spec=spec, observed=obs):
                    await self._log_failure(log, a)
                    self._attempted(a.dal, spec)
                    await self._runtime.restart(obs, spec)
                case Remove(observed=obs):
                    log.info("dal_remove", reason=a.reason, ref=obs.ref[:12])
                    await self._runtime.remove(obs)
        except DalRunError as e:
            match a:
                case Create(spec=spec) | Recreate(spec=spec):
                    self._attempted(a.dal, spec)
                case Start() | Restart() | Remove():
                    pass  # a start counts before it is tried; a remove is not retried
            self.errors[a.dal] = str(e)
            log.error("dal_failed", action=type(a).__name__.lower(), error=str(e))

    async def _log_failure(self, log: EventLog, a: Restart) -> None:
        obs = a.observed
        if obs.state is State.CREATED:
            # Its start failed (the error says why); the restart logs the retry.
            return
        lines = await self._runtime.logs(obs, self._crash_log_lines)
        prev = self.history.get(a.dal)
        n = prev.attempts + 1 if prev and prev.spec_hash == a.spec.spec_hash else 1
        if obs.state is State.RUNNING:
            message = f"unhealthy: {a.reason}"
            log.error("dal_unhealthy_restart", reason=a.reason, attempt=n,
                      last_lines=" | ".join(lines))
        else:
            code = "unknown" if obs.exit_code is None else obs.exit_code
            message = describe_exit(obs.exit_code) + (f": {obs.error}" if obs.error else "")
            if lines:
                message += f" (last output: {lines[-1][:200]})"
            log.error("dal_crashed", exit_code=code, error=obs.error, attempt=n,
                      last_lines=" | ".join(lines))
        self.errors[a.dal] = message


def _ports(spec: DalSpec) -> str:
    return ",".join(f"{k}:{v}" for k, v in spec.host_ports.items()) or "-"
