"""The convergence plan: desired DAL specs + observed instances → actions.

Pure: the same inputs give the same plan, with no I/O and no clock of its own (``now``
is an argument), in the manner of docker-compose's ``convergence_plan``. The agent
observes, calls ``plan``, carries the actions out, then records what it did in the
restart history with ``record_attempt``/``settle``.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

from .config import (
    DEFAULT_BACKOFF_BASE_S,
    DEFAULT_BACKOFF_MAX_S,
    DEFAULT_BACKOFF_RESET_S,
    DEFAULT_UNHEALTHY_GRACE_S,
)
from .spec import DalSpec


class State(str, enum.Enum):
    RUNNING = "running"
    EXITED = "exited"  # ran and stopped (killed, crashed, exited)
    CREATED = "created"  # never ran, or its start failed


class Health(str, enum.Enum):
    NONE = "none"  # no health check: running is as good as it gets
    STARTING = "starting"
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"


@dataclass(frozen=True)
class Observed:
    """One DAL instance as a runtime sees it (a container, or a process record)."""

    dal: str
    ref: str  # container id or process key: what the runtime acts on
    spec_hash: str
    state: State
    health: Health = Health.NONE
    ports: Mapping[str, int] = field(default_factory=dict)
    exit_code: int | None = None
    started_at: float | None = None  # epoch seconds of the last start
    error: str | None = None  # the runtime's reason it is not running, if any
    unhealthy_since: float | None = None  # filled in by the agent, which remembers

    @property
    def live(self) -> bool:
        return self.state is State.RUNNING


@dataclass(frozen=True)
class RestartPolicy:
    backoff_base_s: float = DEFAULT_BACKOFF_BASE_S
    backoff_max_s: float = DEFAULT_BACKOFF_MAX_S
    backoff_reset_s: float = DEFAULT_BACKOFF_RESET_S
    unhealthy_grace_s: float = DEFAULT_UNHEALTHY_GRACE_S

    def delay(self, attempts: int) -> float:
        """Wait before the next attempt after ``attempts`` failed ones: 0, b, 2b, 4b…"""
        if attempts <= 0:
            return 0.0
        return min(self.backoff_base_s * 2 ** (attempts - 1), self.backoff_max_s)


@dataclass(frozen=True)
class Backoff:
    """Failed attempts to run one spec of one DAL; a new spec starts afresh."""

    spec_hash: str
    attempts: int
    last_at: float


class Kind(str, enum.Enum):
    CREATE = "create"
    RECREATE = "recreate"
    START = "start"
    RESTART = "restart"
    REMOVE = "remove"
    WAIT = "wait"  # would restart, but backoff says not yet
    NOOP = "noop"


@dataclass(frozen=True)
class Action:
    kind: Kind
    dal: str
    reason: str
    spec: DalSpec | None = None
    observed: Observed | None = None
    not_before: float | None = None  # WAIT: when the attempt is allowed


@dataclass(frozen=True)
class Plan:
    actions: tuple[Action, ...]
    wake_at: float | None  # the earliest time the plan may change by the clock alone

    def of(self, dal: str) -> list[Action]:
        return [a for a in self.actions if a.dal == dal]

    def changes(self) -> list[Action]:
        return [a for a in self.actions if a.kind not in (Kind.NOOP, Kind.WAIT)]


def _rank(o: Observed, want: str) -> tuple:
    # The instance to keep: the right spec first, then running, then most recent.
    return (o.spec_hash != want, not o.live, -(o.started_at or 0.0), o.ref)


def plan(
    desired: Mapping[str, DalSpec],
    observed: Iterable[Observed],
    history: Mapping[str, Backoff],
    now: float,
    policy: RestartPolicy = RestartPolicy(),
    keep: Iterable[str] = (),
) -> Plan:
    """Decide, per DAL, what to do to reach ``desired``.

    keep: DALs still in the config that cannot be built now (e.g. no free port):
    their instances are left alone rather than removed.
    """
    by_dal: dict[str, list[Observed]] = {}
    for o in observed:
        by_dal.setdefault(o.dal, []).append(o)
    keep = set(keep)
    actions: list[Action] = []
    wakes: list[float] = []

    for dal in sorted(set(by_dal) - set(desired) - keep):
        for o in sorted(by_dal[dal], key=lambda o: o.ref):
            actions.append(Action(Kind.REMOVE, dal, "no longer in the config", observed=o))

    for dal in sorted(desired):
        spec = desired[dal]
        instances = sorted(by_dal.get(dal, []), key=lambda o: _rank(o, spec.spec_hash))
        for extra in instances[1:]:
            actions.append(Action(Kind.REMOVE, dal, "duplicate instance", observed=extra))
        current = instances[0] if instances else None
        backoff = history.get(dal)
        attempts = backoff.attempts if backoff and backoff.spec_hash == spec.spec_hash else 0
        ready_at = backoff.last_at + policy.delay(attempts) if attempts else now

        def gated(kind: Kind, reason: str) -> Action:
            if now < ready_at:
                wakes.append(ready_at)
                return Action(
                    Kind.WAIT, dal, f"{reason}; backoff after {attempts} attempts",
                    spec=spec, observed=current, not_before=ready_at,
                )
            return Action(kind, dal, reason, spec=spec, observed=current)

        if current is None:
            actions.append(gated(Kind.CREATE, "not running here yet"))
        elif current.spec_hash != spec.spec_hash:
            actions.append(gated(Kind.RECREATE, "its spec changed"))
        elif current.state is State.EXITED:
            actions.append(gated(Kind.RESTART, _exit_reason(current)))
        elif current.state is State.CREATED:
            if current.error:
                actions.append(gated(Kind.RESTART, f"its start failed: {current.error}"))
            else:
                actions.append(gated(Kind.START, "created but not started"))
        elif current.health is Health.UNHEALTHY:
            since = current.unhealthy_since if current.unhealthy_since is not None else now
            due = since + policy.unhealthy_grace_s
            if now < due:
                wakes.append(due)
                actions.append(
                    Action(Kind.NOOP, dal, "unhealthy, within its grace", spec=spec, observed=current)
                )
            else:
                actions.append(
                    gated(Kind.RESTART, f"unhealthy for {now - since:.1f}s")
                )
        else:
            actions.append(Action(Kind.NOOP, dal, "up to date", spec=spec, observed=current))

    return Plan(tuple(actions), min(wakes) if wakes else None)


def _exit_reason(o: Observed) -> str:
    code = "unknown" if o.exit_code is None else str(o.exit_code)
    return f"exited with code {code}"


def record_attempt(
    history: Mapping[str, Backoff], dal: str, spec_hash: str, now: float
) -> dict[str, Backoff]:
    """One more attempt (a restart, or a create that failed) for this DAL's spec."""
    out = dict(history)
    prev = out.get(dal)
    attempts = prev.attempts + 1 if prev and prev.spec_hash == spec_hash else 1
    out[dal] = Backoff(spec_hash, attempts, now)
    return out


def settle(
    history: Mapping[str, Backoff],
    observed: Iterable[Observed],
    now: float,
    policy: RestartPolicy = RestartPolicy(),
) -> dict[str, Backoff]:
    """Forget the failures of DALs that have run well for ``backoff_reset_s``."""
    good = {
        o.dal
        for o in observed
        if o.live
        and o.health in (Health.HEALTHY, Health.NONE)
        and o.started_at is not None
        and now - o.started_at >= policy.backoff_reset_s
    }
    return {dal: b for dal, b in history.items() if dal not in good}


def with_unhealthy_since(
    observed: Iterable[Observed], memory: Mapping[str, float], now: float
) -> tuple[list[Observed], dict[str, float]]:
    """Stamp each unhealthy instance with when it was first seen so (keyed by ref);
    returns the stamped instances and the memory to keep for the next pass."""
    out, kept = [], {}
    for o in observed:
        if o.live and o.health is Health.UNHEALTHY:
            since = memory.get(o.ref, now)
            kept[o.ref] = since
            o = replace(o, unhealthy_since=since)
        out.append(o)
    return out, kept
