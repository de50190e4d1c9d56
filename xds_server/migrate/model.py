"""A shard's data migration as plain data: its phase, what the runner and the operators
recorded, and the promotion's steps. Stored as one record (kind ``migration``, name =
the shard) written with compare-and-set on its version (``state``).

Phases, in order::

    shadowing → backfilling → backfilled → verified → promoting (step k) → promoted → finished

and ``rolled_back`` when the operators gave the migration up before its promotion
(the wiring is as before ``start``). ``finished`` and ``rolled_back`` are final: a new
migration of the shard may start.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Literal

Phase = Literal["shadowing", "backfilling", "backfilled", "verified", "promoting", "promoted", "finished",
                "rolled_back"]  # fmt: skip
PHASES: tuple[Phase, ...] = ("shadowing", "backfilling", "backfilled", "verified", "promoting", "promoted",
                             "finished", "rolled_back")  # fmt: skip
FINAL: frozenset[Phase] = frozenset({"finished", "rolled_back"})
RECORD_KIND = "migration"
HISTORY_MAX = 200  # entries kept in a record (the audit log keeps them all)


@dataclass(frozen=True)
class Judgement:
    """How a promotion step is judged (``promote``'s options)."""

    max_error_rate_increase: float = 0.01  # the new DAL's error rate over the old one's, at most
    max_p99_ratio: float = 1.5  # the new DAL's p99 over the old one's, at most ...
    p99_slack_ms: float = 5.0  # ... plus this (a p99 of 1 ms against 0.5 ms is no regression)
    min_requests: int = 1  # fewer requests to the new DAL in a step: not judged yet
    min_p99_requests: int = 100  # a p99 of fewer samples is their maximum: not judged


@dataclass(frozen=True)
class Promotion:
    """A progressive promotion: ``steps`` are the shares of reads served by the new
    DAL (the last is 100: it becomes the primary), each held ``interval_s`` and judged."""

    steps: tuple[float, ...]
    interval_s: float
    judgement: Judgement = field(default_factory=Judgement)
    index: int = 0  # the step in force
    applied_at: float | None = None  # when the step's config was served (None: not yet)
    verdicts: tuple[str, ...] = ()  # one line per judged step
    halted: str | None = None  # why the promotion stopped and rolled back by itself

    @property
    def percent(self) -> float:
        return self.steps[self.index]

    def to_json(self) -> dict[str, Any]:
        return {"steps": list(self.steps), "interval_s": self.interval_s, "judgement": vars(self.judgement),
                "index": self.index, "applied_at": self.applied_at, "verdicts": list(self.verdicts),
                "halted": self.halted}  # fmt: skip

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Promotion:
        return cls(tuple(float(s) for s in d["steps"]), float(d["interval_s"]), Judgement(**d.get("judgement", {})),
                   int(d.get("index", 0)), d.get("applied_at"), tuple(d.get("verdicts", ())), d.get("halted"))  # fmt: skip


@dataclass(frozen=True)
class Migration:
    shard: str
    source: str  # the DAL the data moves from ("from")
    target: str  # the DAL it moves to ("to")
    api: str  # what both serve
    phase: Phase
    started_by: str
    started_at: float
    updated_at: float
    before_version: int  # the shard's version when the migration started
    before_wiring: dict[str, Any] | None = None  # the source's wiring (to the target) before start
    backfill: dict[str, Any] = field(
        default_factory=dict
    )  # the runner's checkpoint, as it wrote it
    verify: dict[str, Any] = field(default_factory=dict)  # the last verify report
    throttle: dict[str, float] = field(default_factory=dict)  # items_per_s, bytes_per_s
    promotion: Promotion | None = None
    halted: str | None = None  # the last promotion that stopped by itself, and why
    history: tuple[dict[str, Any], ...] = ()  # {at, by, what, phase, version}
    record_version: int = 0  # the store record's version (0: not stored yet)

    @property
    def running(self) -> bool:
        return self.phase not in FINAL

    def moved(self, phase: Phase, at: float, by: str, what: str, version: int | None = None,
              **changes: Any) -> Migration:  # fmt: skip
        """The migration in ``phase``, with the step recorded in its history."""
        entry = {"at": at, "by": by, "what": what, "phase": phase, "version": version}
        return replace(
            self,
            phase=phase,
            updated_at=at,
            history=(*self.history, entry)[-HISTORY_MAX:],
            **changes,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "shard": self.shard, "from": self.source, "to": self.target, "api": self.api, "phase": self.phase,
            "started_by": self.started_by, "started_at": self.started_at, "updated_at": self.updated_at,
            "before_version": self.before_version, "before_wiring": self.before_wiring, "backfill": self.backfill, "verify": self.verify,
            "throttle": self.throttle, "promotion": self.promotion.to_json() if self.promotion else None,
            "halted": self.halted, "history": list(self.history),
        }  # fmt: skip

    @classmethod
    def from_json(cls, d: dict[str, Any], record_version: int) -> Migration:
        promotion = d.get("promotion")
        return cls(
            d["shard"], d["from"], d["to"], d.get("api", ""), d["phase"], d.get("started_by", ""),
            float(d.get("started_at", 0)), float(d.get("updated_at", 0)), int(d.get("before_version", 0)),
            d.get("before_wiring"),
            dict(d.get("backfill") or {}), dict(d.get("verify") or {}), dict(d.get("throttle") or {}),
            Promotion.from_json(promotion) if promotion else None, d.get("halted"),
            tuple(d.get("history") or ()), record_version,
        )  # fmt: skip
