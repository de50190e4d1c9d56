"""What each migration step does, or why it may not run now. Pure functions.

Each operator step (``start``, the runner's ``backfill`` checkpoint and ``verify``
report, ``throttle``, ``promote``, ``rollback``, ``finish``) takes the migration as it
is stored (None: none yet) and the shard's config, and returns the migration it
becomes, or raises ``Refused`` with one line saying what must happen first. The
engine stores the result with compare-and-set and then makes the shard's wiring what
``wiring_ops`` says the phase needs (one versioned change through ``changes``).

The wiring of each phase (A = from, B = to)::

    shadowing .. verified   A: {mode: shadow, target: B, traffic: writes}
    promoting, step p < 100 A: {mode: shadow, target: B, traffic: writes, read_percent: p}
    promoting 100, promoted B: {mode: shadow, target: A, traffic: writes}  (A keeps every write)
    finished                A retired (the DAL and its wiring go), B alone
    rolled_back             neither A nor B wired (as before start)

How a DAL's API is known (``dal_api``): its ``api:`` key; else the gRPC services its
``read_methods`` name (``/dgw.kv.v1.KeyValue/GetItems`` → ``dgw.kv.v1.KeyValue``);
else its image's repository (``registry/kv-dal:3`` → ``kv-dal``). A DAL with none of
them cannot be migrated: its ``api:`` must be declared.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from xds_server.config import quote
from xds_server.config.model import RuntimeConfig, Wiring
from xds_server.node_stats import TrafficSummary
from xds_server.ops import wiring

from .model import FINAL, Judgement, Migration, Phase, Promotion

# Services every gRPC server may have besides its API (health, reflection): a DAL that
# lists them in read_methods does not serve another API for it.
_EVERY_SERVERS = ("/grpc.health.", "/grpc.reflection.")
STEPS_MAX = 20
INTERVAL_S = (0.5, 86400.0)


class Refused(Exception):
    """The step may not run now: one line, what must happen first. ``status`` is the
    HTTP answer (404: no such migration or DAL, 409: out of order, 400: bad input)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


# --- what a DAL serves --------------------------------------------------------------


def dal_api(config: RuntimeConfig, dal: str) -> str | None:
    spec = config.container_dals.get(dal) or config.network_dals.get(dal)
    if spec is None:
        return None
    if spec.api:
        return spec.api
    services = sorted({m.split("/")[1] for m in spec.read_methods or ()
                       if m.count("/") == 2 and not m.startswith(_EVERY_SERVERS)})  # fmt: skip
    if services:
        return ",".join(services)
    image = getattr(spec, "image", None)
    if image:
        name = image.split("@")[0].rsplit("/", 1)[-1]
        return name.split(":")[0] or None
    return None


def _dals(config: RuntimeConfig) -> list[str]:
    return sorted([*config.container_dals, *config.network_dals])


# --- the steps ----------------------------------------------------------------------


def start(existing: Migration | None, config: RuntimeConfig, shard: str, source: str, target: str, *,
          by: str, now: float, version: int) -> Migration:  # fmt: skip
    if existing is not None and existing.running:
        raise Refused(409, f"shard {shard} is already migrating {existing.source} → {existing.target} "
                           f"({existing.phase}); finish or roll it back first")  # fmt: skip
    dals = _dals(config)
    for role, name in (("--from", source), ("--to", target)):
        if name not in dals:
            raise Refused(404, f"{role} DAL {name!r} is not a DAL of shard {shard}; its DALs: "
                               f"{', '.join(dals) or 'none'}")  # fmt: skip
    if source == target:
        raise Refused(
            400, f"--from and --to are both {source!r}: a migration moves data between two DALs"
        )
    apis = {name: dal_api(config, name) for name in (source, target)}
    for name, api in apis.items():
        if api is None:
            raise Refused(400, f"DAL {name!r} does not say which API it serves: add `api: NAME` to it "
                               "(or read_methods, or an image), so a migration can check both serve one API")  # fmt: skip
    if apis[source] != apis[target]:
        raise Refused(400, f"DALs {source!r} ({apis[source]}) and {target!r} ({apis[target]}) serve different "
                           "APIs: data moves only between DALs of one API")  # fmt: skip
    for name in (source, target):
        container, network = config.container_dals.get(name), config.network_dals.get(name)
        spec = container or network
        served = set(container.container_listeners if container else network.listeners if network else ())
        grpc = sorted(n for n, lst in config.proxy_config.public_listeners.items() if lst.mode == "grpc" and n in served)
        if grpc and not (spec is not None and spec.read_methods):
            raise Refused(400, f"DAL {name!r} serves gRPC listener {grpc[0]} but declares no read_methods: declare "
                               "them, so that only writes are copied and reads can move in steps")  # fmt: skip
    before = config.wiring.get(source)
    if before is not None and before.target != target:
        raise Refused(409, f"DAL {source!r} is already wired ({before.mode} to {before.target}); clear that "
                           f"wiring first (dgw wiring {shard} clear {source})")  # fmt: skip
    if target in config.wiring:
        w = config.wiring[target]
        raise Refused(409, f"DAL {target!r} is already wired ({w.mode} to {w.target}); clear that wiring first "
                           f"(dgw wiring {shard} clear {target})")  # fmt: skip
    for name in (source, target):
        wired_to = sorted(s for s, w in config.wiring.items() if w.target == name and s != source)
        if wired_to:
            raise Refused(409, f"DAL {name!r} is already the target of {', '.join(wired_to)}'s wiring; clear "
                               "that wiring first")  # fmt: skip
    # An operator's own wiring of A to B (the seed's shadow) is taken over, and is back after a rollback.
    kept = before.model_dump(exclude_defaults=True) if before is not None else None
    m = Migration(
        shard,
        source,
        target,
        str(apis[source]),
        "shadowing",
        by,
        now,
        now,
        version,
        before_wiring=kept,
    )
    return m.moved("shadowing", now, by, f"start {source} → {target}: writes to {source} copied to {target}",
                   **_keep(existing))  # fmt: skip


def _keep(existing: Migration | None) -> dict[str, Any]:
    """A new migration over a final one takes over its record (compare-and-set on it)."""
    return {"record_version": existing.record_version} if existing is not None else {}


def _running(m: Migration | None, shard: str) -> Migration:
    if m is None:
        raise Refused(
            404,
            f"shard {shard} has no migration; start one: dgw migrate {shard} start --from A --to B",
        )
    if not m.running:
        raise Refused(409, f"the migration of shard {shard} ({m.source} → {m.target}) is {m.phase.replace('_', ' ')}; "
                           f"start a new one: dgw migrate {shard} start --from A --to B")  # fmt: skip
    return m


def _out_of_order(m: Migration, step: str) -> Refused:
    return Refused(
        409, f"cannot {step}: the migration of shard {m.shard} is {_phase_text(m)}; {next_step(m)}"
    )


def backfill(
    m: Migration | None, shard: str, checkpoint: Mapping[str, Any], *, by: str, now: float
) -> Migration:
    """The runner's checkpoint (cursors, totals, lease, ``done``)."""
    m = _running(m, shard)
    if m.phase not in ("shadowing", "backfilling"):
        raise _out_of_order(m, "backfill")
    data = dict(checkpoint)
    if data.get("done"):  # a report from before this copy no longer says what differs
        return m.moved("backfilled", now, by, f"backfill done: {_totals(data)}", backfill=data, verify={})
    if m.phase == "shadowing":
        return m.moved("backfilling", now, by, "backfill began", backfill=data)
    return replace(m, backfill=data, updated_at=now)


def verify(
    m: Migration | None, shard: str, report: Mapping[str, Any], *, by: str, now: float
) -> Migration:
    """A verify report: the migration is verified when a finished report found no
    difference left (``differences`` 0, or every one fixed)."""
    m = _running(m, shard)
    if m.phase not in ("backfilled", "verified"):
        raise _out_of_order(m, "verify")
    data = dict(report)
    left = differences_left(data)
    if data.get("done", True) is False:
        return replace(m, verify=data, updated_at=now)
    if left == 0:
        return m.moved(
            "verified", now, by, f"verified: {_counted(data)}, no difference", verify=data
        )
    return m.moved("backfilled", now, by, f"verify found {left} differences", verify=data)


RUNNER_STEPS = ("backfill", "verify")


def runner_refusal(m: Migration, step: str) -> str | None:
    """Why the runner's ``backfill`` or ``verify`` may not run now (None: it may): the
    refusal its first checkpoint or report would get, said before it copies or compares
    anything (a verify out of order would otherwise compare, or with ``--fix`` repair,
    every namespace only to have its report refused)."""
    record = backfill if step == "backfill" else verify
    try:
        record(m, m.shard, {"done": False}, by="", now=m.updated_at)
    except Refused as e:
        return str(e)
    return None


def differences_left(report: Mapping[str, Any]) -> int:
    diffs = report.get("differences")
    found = (
        len(diffs)
        if isinstance(diffs, list)
        else int(diffs or 0)
        if isinstance(diffs, int | float)
        else 0
    )
    fixed = report.get("fixed")
    done = (
        len(fixed)
        if isinstance(fixed, list)
        else int(fixed or 0)
        if isinstance(fixed, int | float)
        else 0
    )
    return max(0, found - done)


def throttle(m: Migration | None, shard: str, items_per_s: float | None, bytes_per_s: float | None, *,
             by: str, now: float) -> Migration:  # fmt: skip
    m = _running(m, shard)
    if m.phase not in ("shadowing", "backfilling", "backfilled", "verified"):
        raise _out_of_order(m, "throttle")
    rate = dict(m.throttle)
    for key, value in (("items_per_s", items_per_s), ("bytes_per_s", bytes_per_s)):
        if value is not None:
            rate[key] = value
    said = ", ".join(f"{k.replace('_per_s', '')}/s {v:g}" for k, v in sorted(rate.items()))
    return m.moved(m.phase, now, by, f"throttle: {said}", throttle=rate)


def promote(m: Migration | None, shard: str, steps: Sequence[float] | None, interval_s: float | None, *,
            by: str, now: float, judgement: Judgement | None = None) -> Migration:  # fmt: skip
    m = _running(m, shard)
    if m.phase != "verified":
        raise _out_of_order(m, "promote")
    if not steps:
        return m.moved("promoted", now, by, f"promoted {m.target}: {m.source} keeps a copy of every write",
                       promotion=None, halted=None)  # fmt: skip
    check_steps(steps, interval_s)
    assert interval_s is not None
    promotion = Promotion(
        tuple(float(s) for s in steps), float(interval_s), judgement or Judgement()
    )
    return m.moved("promoting", now, by, f"promotion in steps {_steps_text(steps)} every {interval_s:g}s",
                   promotion=promotion, halted=None)  # fmt: skip


def check_steps(steps: Sequence[float], interval_s: float | None) -> None:
    if len(steps) > STEPS_MAX:
        raise Refused(400, f"at most {STEPS_MAX} steps")
    for s in steps:
        if (
            isinstance(s, bool)
            or not isinstance(s, int | float)
            or not math.isfinite(s)
            or not 0 < s <= 100
        ):
            raise Refused(
                400, f"steps are percents of reads above 0 and at most 100, not {_step_text(s)}"
            )
    if list(steps) != sorted(set(steps)):
        raise Refused(400, f"steps must rise: {_steps_text(steps)}")
    if steps[-1] != 100:
        raise Refused(
            400, f"the last step must be 100 (the new DAL serves everything), not {steps[-1]:g}"
        )
    low, high = INTERVAL_S
    if not isinstance(interval_s, int | float) or isinstance(interval_s, bool) or not low <= interval_s <= high:
        raise Refused(400, f"interval must be from {low:g}s to {high:g}s")


def rollback(
    m: Migration | None, shard: str, *, by: str, now: float, abandon: bool = False
) -> Migration:
    """Back to the state before the current phase (``abandon``: before ``start``)."""
    m = _running(m, shard)
    if abandon or m.phase == "shadowing":
        return m.moved("rolled_back", now, by, f"rolled back from {m.phase}: the wiring is as before start",
                       promotion=None)  # fmt: skip
    back: dict[Phase, Phase] = {"backfilling": "shadowing", "backfilled": "shadowing", "verified": "backfilled",
                                "promoting": "verified", "promoted": "verified"}  # fmt: skip
    phase = back[m.phase]
    changes: dict[str, Any] = {"promotion": None}
    if phase == "shadowing":
        changes["backfill"], changes["verify"] = {}, {}
    if phase == "backfilled":
        changes["verify"] = {}
    what = f"rolled back from {_phase_text(m)} to {phase}"
    if m.phase in ("promoting", "promoted"):
        what += f": {m.source} serves again, {m.target} gets a copy of every write"
    return m.moved(phase, now, by, what, **changes)


def finish(m: Migration | None, shard: str, *, by: str, now: float) -> Migration:
    m = _running(m, shard)
    if m.phase != "promoted":
        raise _out_of_order(m, "finish")
    return m.moved(
        "finished",
        now,
        by,
        f"finished: {m.source} and its copy of writes removed; {m.target} serves",
    )


# --- the promotion's steps -------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    passed: bool
    line: str


def judge(
    p: Promotion, old: TrafficSummary, new: TrafficSummary, source: str, target: str
) -> Verdict | None:
    """A step's verdict from both DALs' traffic over the step (None: too little to judge)."""
    j = p.judgement
    step = f"step {p.index + 1} ({p.percent:g}%)"
    if new.requests < j.min_requests:
        return None
    allowed = old.error_rate + j.max_error_rate_increase
    if new.errors and new.error_rate > allowed:
        return Verdict(False, f"{step} failed: {target}'s error rate {new.error_rate:.1%} ({new.errors} of "
                              f"{new.requests}) is over the allowed {allowed:.1%} ({source}'s {old.error_rate:.1%} "
                              f"+ {j.max_error_rate_increase:.1%}) by {new.error_rate - allowed:.1%}")  # fmt: skip
    judged = min(new.requests, old.requests) >= j.min_p99_requests
    if judged and new.p99_ms is not None and old.p99_ms is not None:
        limit = old.p99_ms * j.max_p99_ratio + j.p99_slack_ms
        if new.p99_ms > limit:
            return Verdict(False, f"{step} failed: {target}'s p99 {new.p99_ms:.1f} ms is over the allowed "
                                  f"{limit:.1f} ms ({source}'s {old.p99_ms:.1f} ms x {j.max_p99_ratio:g} + "
                                  f"{j.p99_slack_ms:g} ms) by {new.p99_ms - limit:.1f} ms")  # fmt: skip
    if new.p99_ms is None or old.p99_ms is None:
        p99 = "p99 not measured"
    elif not judged:
        p99 = f"p99 {new.p99_ms:.1f} ms vs {old.p99_ms:.1f} ms, not judged (fewer than {j.min_p99_requests} requests)"
    else:
        p99 = f"p99 {new.p99_ms:.1f} ms vs {old.p99_ms:.1f} ms"
    return Verdict(True, f"{step} passed: {target} {new.requests} requests, error rate {new.error_rate:.1%} "
                         f"(allowed {allowed:.1%}), {p99}")  # fmt: skip


def step_passed(m: Migration, verdict: str, *, now: float) -> Migration:
    """The step passed: on to the next one, or promoted after the last."""
    assert m.promotion is not None
    p = replace(m.promotion, verdicts=(*m.promotion.verdicts, verdict))
    if p.index + 1 >= len(p.steps):
        return m.moved("promoted", now, "migration", verdict, promotion=p)
    nxt = replace(p, index=p.index + 1, applied_at=None)
    return m.moved(
        "promoting", now, "migration", f"{verdict}; next: {nxt.percent:g}% of reads", promotion=nxt
    )


def step_failed(m: Migration, verdict: str, *, now: float) -> Migration:
    """The step failed: the promotion halts and rolls back to verified by itself."""
    assert m.promotion is not None
    line = f"{verdict}; rolled back by itself: {m.source} serves again"
    return m.moved("verified", now, "migration", line, promotion=None, halted=line)


# --- the wiring each phase needs -----------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    """One wiring entry as the phase needs it (None in ``wanted``: no wiring)."""

    mode: str
    target: str
    traffic: str = "all"
    read_percent: float | None = None
    percent: float | None = None


def wanted(m: Migration) -> tuple[dict[str, Entry | None], bool]:
    """The wiring of the migration's two DALs, and whether the old DAL is retired."""
    a, b = m.source, m.target
    if m.phase == "finished":
        return {b: None}, True
    if m.phase == "rolled_back":
        return {
            a: _entry_of(Wiring(**m.before_wiring)) if m.before_wiring else None,
            b: None,
        }, False
    promoted = m.phase == "promoted" or (m.phase == "promoting" and m.promotion is not None
                                         and m.promotion.percent >= 100)  # fmt: skip
    if promoted:
        return {a: None, b: Entry("shadow", a, "writes")}, False
    reads = m.promotion.percent if m.phase == "promoting" and m.promotion is not None else None
    return {a: Entry("shadow", b, "writes", reads), b: None}, False


def _entry_of(w: Wiring | None) -> Entry | None:
    if w is None:
        return None
    return Entry(w.mode, w.target, w.traffic, w.read_percent, w.percent)


def wiring_ops(config: RuntimeConfig, m: Migration) -> list[wiring.WiringOp]:
    """What brings the shard's wiring to the phase's (empty: it is there already)."""
    entries, retire = wanted(m)
    if retire:
        return [wiring.Retire(m.source)] if m.source in _dals(config) else []
    ops: list[wiring.WiringOp] = []
    for dal, entry in entries.items():
        have = _entry_of(config.wiring.get(dal))
        if have == entry:
            continue
        if entry is None:
            ops.append(wiring.Clear(dal))
        elif entry.mode == "split":
            ops.append(wiring.Split(dal, entry.target, entry.percent or 0.0))
        else:
            traffic = None if entry.traffic == "all" else entry.traffic
            ops.append(wiring.Shadow(dal, entry.target, entry.percent, traffic, entry.read_percent))
    return ops


def apply_ops(text: str, ops: Sequence[wiring.WiringOp]) -> str:
    for op in ops:
        text = wiring.apply(text, op)
    return text


# --- what the operator reads ------------------------------------------------------------


def _phase_text(m: Migration) -> str:
    if m.phase == "promoting" and m.promotion is not None:
        p = m.promotion
        return f"promoting (step {p.index + 1} of {len(p.steps)}: {p.percent:g}% of reads)"
    return m.phase.replace("_", " ")


def _step_text(step: object) -> str:
    return f"{step:g}" if isinstance(step, int | float) and not isinstance(step, bool) else quote(step, 30)


def _steps_text(steps: Sequence[float]) -> str:
    return ",".join(f"{s:g}" for s in steps)


def _totals(data: Mapping[str, Any]) -> str:
    totals = data.get("totals") if isinstance(data.get("totals"), dict) else {}
    assert isinstance(totals, dict)
    return f"{totals.get('items', 0)} items, {totals.get('bytes', 0)} bytes"


def _counted(data: Mapping[str, Any]) -> str:
    namespaces = data.get("namespaces")
    if isinstance(namespaces, dict):
        items = sum(n.get("source_items") or 0 for n in namespaces.values() if isinstance(n, dict))
        return f"{items} items in {len(namespaces)} namespaces"
    for key in ("items", "records", "checked"):
        if isinstance(data.get(key), int):
            return f"{data[key]} {key}"
    return "compared"


def next_step(m: Migration) -> str:
    """What the operator does next, as one line."""
    s = f"dgw migrate {m.shard}"
    match m.phase:
        case "shadowing":
            return f"next: copy the data: {s} backfill"
        case "backfilling":
            return f"next: let the backfill finish (or run it again to resume: {s} backfill)"
        case "backfilled":
            left = differences_left(m.verify)
            if m.verify and left:
                return f"next: {left} differences found: {s} verify --fix"
            return f"next: compare both sides: {s} verify"
        case "verified":
            return f"next: {s} promote (or --steps 1,10,50,100 --interval 30s)"
        case "promoting":
            return f"next: wait: the promotion moves by itself (or {s} rollback)"
        case "promoted":
            return f"next: {s} finish (removes {m.source} and its copy of writes), or {s} rollback"
        case "finished" | "rolled_back":
            return f"nothing: the migration is {m.phase.replace('_', ' ')}"
    return ""


def is_final(m: Migration) -> bool:
    return m.phase in FINAL
