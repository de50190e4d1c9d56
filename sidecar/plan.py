"""The convergence plan: desired DAL specs + observed instances → actions.

Pure: the same inputs give the same plan, with no I/O and no clock of its own (``now``
is an argument), in the manner of docker-compose's ``convergence_plan``. The agent
observes, calls ``plan``, carries the actions out, then records what it did in the
failure history with ``record_attempt``/``forget_recovered``.

An action is one small class per kind (a tagged union): whoever carries a plan out
``match``es on it, and each kind holds exactly what acting on it needs.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

from common.backoff import backoff_delay
from common.exits import describe_exit
from dgw_api.health import Health

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
        return backoff_delay(attempts, self.backoff_base_s, self.backoff_max_s)


@dataclass(frozen=True)
class Failures:
    """Failed attempts to run one spec of one DAL; a new spec starts afresh."""

    spec_hash: str
    attempts: int
    last_at: float


@dataclass(frozen=True)
class Create:
    dal: str
    reason: str
    spec: DalSpec


@dataclass(frozen=True)
class Recreate:
    """Remove ``observed`` (made from an older spec), then create ``spec``."""

    dal: str
    reason: str
    spec: DalSpec
    observed: Observed


@dataclass(frozen=True)
class Start:
    """Start an instance that was created but never ran."""

    dal: str
    reason: str
    spec: DalSpec
    observed: Observed


@dataclass(frozen=True)
class Restart:
    """Start again an instance that died, failed to start, or stays unhealthy."""

    dal: str
    reason: str
    spec: DalSpec
    observed: Observed


@dataclass(frozen=True)
class Remove:
    dal: str
    reason: str
    observed: Observed


@dataclass(frozen=True)
class Wait:
    """Would act, but the restart backoff says not before ``not_before``."""

    dal: str
    reason: str
    not_before: float


@dataclass(frozen=True)
class Keep:
    """Nothing to do: up to date, or unhealthy but still within its grace."""

    dal: str
    reason: str


Change = Create | Recreate | Start | Restart | Remove
Action = Change | Wait | Keep


@dataclass(frozen=True)
class Plan:
    actions: tuple[Action, ...]
    wake_at: float | None  # the earliest time the plan may change by the clock alone

    def of(self, dal: str) -> list[Action]:
        return [a for a in self.actions if a.dal == dal]

    def changes(self) -> list[Change]:
        return [a for a in self.actions if not isinstance(a, Wait | Keep)]


def _rank(o: Observed, want: str) -> tuple[bool, bool, float, str]:
    # The instance to keep: the right spec first, then running, then most recent.
    return (o.spec_hash != want, not o.live, -(o.started_at or 0.0), o.ref)


def plan(
    desired: Mapping[str, DalSpec],
    observed: Iterable[Observed],
    history: Mapping[str, Failures],
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
    kept = set(keep)
    actions: list[Action] = []
    wakes: list[float] = []

    for dal in sorted(set(by_dal) - set(desired) - kept):
        for o in sorted(by_dal[dal], key=lambda o: o.ref):
            actions.append(Remove(dal, "no longer in the config", o))

    for dal in sorted(desired):
        spec = desired[dal]
        instances = sorted(by_dal.get(dal, []), key=lambda o: _rank(o, spec.spec_hash))
        for extra in instances[1:]:
            actions.append(Remove(dal, "duplicate instance", extra))
        current = instances[0] if instances else None
        failed = history.get(dal)
        attempts = failed.attempts if failed and failed.spec_hash == spec.spec_hash else 0
        ready_at = failed.last_at + policy.delay(attempts) if failed and attempts else now

        change: Change | None = None
        if current is None:
            change = Create(dal, "not running here yet", spec)
        elif current.spec_hash != spec.spec_hash:
            change = Recreate(dal, "its spec changed", spec, current)
        elif current.state is State.EXITED:
            change = Restart(dal, describe_exit(current.exit_code), spec, current)
        elif current.state is State.CREATED:
            if current.error:
                change = Restart(dal, f"its start failed: {current.error}", spec, current)
            else:
                change = Start(dal, "created but not started", spec, current)
        elif current.health is Health.UNHEALTHY:
            since = current.unhealthy_since if current.unhealthy_since is not None else now
            due = since + policy.unhealthy_grace_s
            if now < due:
                wakes.append(due)
                actions.append(Keep(dal, "unhealthy, within its grace"))
            else:
                change = Restart(dal, f"unhealthy for {now - since:.1f}s", spec, current)
        else:
            actions.append(Keep(dal, "up to date"))
        if change is not None:
            actions.append(_gate(change, now, ready_at, attempts))

    wakes.extend(a.not_before for a in actions if isinstance(a, Wait))
    return Plan(tuple(actions), min(wakes) if wakes else None)


def _gate(change: Change, now: float, ready_at: float, attempts: int) -> Change | Wait:
    """``change``, or a wait if the backoff after ``attempts`` failures holds it back."""
    if now < ready_at:
        return Wait(change.dal, f"{change.reason}; backoff after {attempts} attempts", ready_at)
    return change


def record_attempt(
    history: Mapping[str, Failures], dal: str, spec_hash: str, now: float
) -> dict[str, Failures]:
    """One more attempt (a restart, or a create that failed) for this DAL's spec."""
    out = dict(history)
    prev = out.get(dal)
    attempts = prev.attempts + 1 if prev and prev.spec_hash == spec_hash else 1
    out[dal] = Failures(spec_hash, attempts, now)
    return out


def forget_recovered(
    history: Mapping[str, Failures],
    observed: Iterable[Observed],
    now: float,
    policy: RestartPolicy = RestartPolicy(),
) -> dict[str, Failures]:
    """Forget the failures of DALs that have run well for ``backoff_reset_s``."""
    good = {
        o.dal
        for o in observed
        if o.live
        and o.health.serving
        and o.started_at is not None
        and now - o.started_at >= policy.backoff_reset_s
    }
    return {dal: b for dal, b in history.items() if dal not in good}


def with_unhealthy_since(
    observed: Iterable[Observed], memory: Mapping[str, float], now: float
) -> tuple[list[Observed], dict[str, float]]:
    """Stamp each unhealthy instance with when it was first seen so (keyed by ref);
    returns the stamped instances and the memory to keep for the next pass."""
    out: list[Observed] = []
    kept: dict[str, float] = {}
    for o in observed:
        if o.live and o.health is Health.UNHEALTHY:
            since = memory.get(o.ref, now)
            kept[o.ref] = since
            o = replace(o, unhealthy_since=since)
        out.append(o)
    return out, kept
