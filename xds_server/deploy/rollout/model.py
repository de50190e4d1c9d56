"""A rollout's state, as it is kept in the config store (record kind ``rollout``).

A rollout changes many shards in **waves**: less critical tiers first (tier 3 first,
tier 0 last; tiers above 3 are less critical still and go before 3), and within a
tier one location after another. Each wave is applied, must be taken by every node
of its shards, bakes, and is judged before the next begins; a failed judgement rolls
that wave back and halts the rollout.

Everything here is plain data with its JSON form: the step function
(``rollout.step``) reads it and says what to do, the engine (``rollout.engine``)
does it and writes the next state back with compare-and-set, so a restarted server
(or another replica taking over) continues where the last one stopped.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

RECORD_KIND = "rollout"
TEXT_KIND = "rollout-text"  # a text rollout's new shard files, one record each
INDEX_KIND = "rollout-index"  # "active": the ids of the rollouts still running

RolloutState = Literal["running", "succeeded", "failed", "aborted"]
WaveState = Literal["pending", "applying", "baking", "passed", "failed", "rolled_back"]
FINAL: frozenset[str] = frozenset({"succeeded", "failed", "aborted"})
IN_FLIGHT: frozenset[str] = frozenset({"applying", "baking"})

# Defaults of `dgw rollout start` (one place, next to the model).
DEFAULT_BAKE_S = 60.0
DEFAULT_SYNC_TIMEOUT_S = 120.0  # every node must take a wave (and its DALs be healthy) within
DEFAULT_BASELINE_S = 60.0  # the traffic before a wave it is compared with
DEFAULT_MAX_ERROR_RATE_INCREASE = 0.01  # +1 percentage point of 5xx
DEFAULT_MIN_REQUESTS = 20  # fewer requests in the bake than this judge no error rate
UNPLACED = "unplaced"


@dataclass(frozen=True)
class Options:
    bake_s: float = DEFAULT_BAKE_S
    sync_timeout_s: float = DEFAULT_SYNC_TIMEOUT_S
    baseline_s: float = DEFAULT_BASELINE_S
    max_error_rate_increase: float = DEFAULT_MAX_ERROR_RATE_INCREASE
    min_requests: int = DEFAULT_MIN_REQUESTS
    wave_size: int = 0  # shards per wave at most (0: a whole tier-location group)

    def to_json(self) -> dict[str, Any]:
        return {"bake_s": self.bake_s, "sync_timeout_s": self.sync_timeout_s, "baseline_s": self.baseline_s,
                "max_error_rate_increase": self.max_error_rate_increase,
                "min_requests": self.min_requests, "wave_size": self.wave_size}  # fmt: skip

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Options:
        return cls(float(data["bake_s"]), float(data["sync_timeout_s"]), float(data["baseline_s"]),
                   float(data["max_error_rate_increase"]), int(data["min_requests"]), int(data["wave_size"]))  # fmt: skip


@dataclass(frozen=True)
class Target:
    """One shard's part: the version it ran when the rollout began (what a rollback
    returns to) and what it becomes."""

    shard: str
    tier: int
    location: str  # account/region[/stack] of its first location, or ``unplaced``
    owners: tuple[str, ...]  # "type value", for every message an owner should hear
    from_version: int
    new_text: bool  # its new file is a TEXT_KIND record (else: the same text, new pins)
    pins: int | None = None  # index into Rollout.pinsets: the DAL pins to run (None: resolve)
    applied_version: int | None = None
    config_version: str | None = None  # what its nodes must run once applied
    rolled_back_version: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {"shard": self.shard, "tier": self.tier, "location": self.location, "owners": list(self.owners),
                "from_version": self.from_version, "new_text": self.new_text, "pins": self.pins,
                "applied_version": self.applied_version, "config_version": self.config_version,
                "rolled_back_version": self.rolled_back_version}  # fmt: skip

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Target:
        return cls(str(d["shard"]), int(d["tier"]), str(d["location"]), tuple(d.get("owners", ())),
                   int(d["from_version"]), bool(d["new_text"]), d.get("pins"), d.get("applied_version"),
                   d.get("config_version"), d.get("rolled_back_version"))  # fmt: skip


@dataclass(frozen=True)
class Figure:
    """One judged figure of a shard: a listener's (what clients got) or a DAL
    cluster's 5xx over its requests, in a window."""

    name: str  # "listener api", "cluster dal.kv.api"
    requests: int
    errors: int

    @property
    def rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    def to_json(self) -> list[Any]:
        return [self.name, self.requests, self.errors]

    @classmethod
    def from_json(cls, d: list[Any]) -> Figure:
        return cls(str(d[0]), int(d[1]), int(d[2]))


@dataclass(frozen=True)
class Wave:
    index: int
    tier: int
    location: str
    shards: tuple[str, ...]
    state: WaveState = "pending"
    started_at: float | None = None
    applied_at: float | None = None
    synced_at: float | None = None  # every node took it: its bake began
    finished_at: float | None = None
    baseline: Mapping[str, tuple[Figure, ...]] = field(default_factory=dict)  # per shard
    verdict: str = ""  # why it passed or failed, in figures

    @property
    def name(self) -> str:
        return f"wave {self.index + 1} (tier {self.tier}, {self.location})"

    def to_json(self) -> dict[str, Any]:
        return {"index": self.index, "tier": self.tier, "location": self.location, "shards": list(self.shards),
                "state": self.state, "started_at": self.started_at, "applied_at": self.applied_at,
                "synced_at": self.synced_at, "finished_at": self.finished_at,
                "baseline": {s: [f.to_json() for f in fs] for s, fs in sorted(self.baseline.items())},
                "verdict": self.verdict}  # fmt: skip

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Wave:
        return cls(int(d["index"]), int(d["tier"]), str(d["location"]), tuple(d["shards"]), d["state"],
                   d.get("started_at"), d.get("applied_at"), d.get("synced_at"), d.get("finished_at"),
                   {s: tuple(Figure.from_json(f) for f in fs) for s, fs in d.get("baseline", {}).items()},
                   str(d.get("verdict", "")))  # fmt: skip


@dataclass(frozen=True)
class Rollout:
    id: str
    created_at: float
    created_by: str
    message: str
    kind: Literal["files", "resolve"]  # new shard files, or version sets resolved again
    options: Options
    waves: tuple[Wave, ...]
    targets: Mapping[str, Target]
    pinsets: tuple[tuple[dict[str, str], ...], ...] = ()  # DAL pins as JSON, shared by targets
    state: RolloutState = "running"
    paused: bool = False
    abort_requested: str = ""  # who asked (the in-flight wave is rolled back, then it ends)
    finished_at: float | None = None
    outcome: str = ""  # one line: what happened, where, which figure
    record_version: int = 0  # the record's version it was read at (compare-and-set)

    @property
    def current(self) -> Wave | None:
        """The wave in flight, else the next pending one (None: none is left)."""
        for w in self.waves:
            if w.state in IN_FLIGHT:
                return w
        return next((w for w in self.waves if w.state == "pending"), None)

    def with_wave(self, wave: Wave) -> Rollout:
        return replace(self, waves=tuple(wave if w.index == wave.index else w for w in self.waves))

    def with_targets(self, targets: Mapping[str, Target]) -> Rollout:
        return replace(self, targets={**self.targets, **targets})

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "created_at": self.created_at, "created_by": self.created_by,
                "message": self.message, "kind": self.kind, "options": self.options.to_json(),
                "waves": [w.to_json() for w in self.waves],
                "targets": {s: t.to_json() for s, t in sorted(self.targets.items())},
                "pinsets": [list(p) for p in self.pinsets], "state": self.state, "paused": self.paused,
                "abort_requested": self.abort_requested, "finished_at": self.finished_at,
                "outcome": self.outcome}  # fmt: skip

    @classmethod
    def from_json(cls, d: Mapping[str, Any], record_version: int = 0) -> Rollout:
        return cls(str(d["id"]), float(d["created_at"]), str(d["created_by"]), str(d["message"]), d["kind"],
                   Options.from_json(d["options"]), tuple(Wave.from_json(w) for w in d["waves"]),
                   {s: Target.from_json(t) for s, t in d["targets"].items()},
                   tuple(tuple(p) for p in d.get("pinsets", ())), d["state"], bool(d.get("paused")),
                   str(d.get("abort_requested", "")), d.get("finished_at"), str(d.get("outcome", "")),
                   record_version)  # fmt: skip
