"""Migrations inside the server: each step stored, then the shard's wiring made what its
phase needs; the progressive promotion's reconcile loop.

State: one record per shard (kind ``migration``, name = the shard), written with
compare-and-set on its version, so two operators who start at once cannot both win,
and a runner whose migration moved on (a rollback) is told so. Every step is in the
audit log (``migration.start`` ... ``migration.finish``, ``migration.step.passed``,
``migration.step.failed``), and every config change it makes is a version of the
shard through the one change path (``xds_server.changes``), authored by the operator
(or ``migration:SHARD`` for the loop's own steps).

The order is: record first, then config. A server killed between the two serves the
old wiring until the loop (``tick``, at start and every ``_IDLE_S``) reconciles: the
wiring is a pure function of the record (``plan.wiring_ops``), applied only if it
differs, so acting twice changes nothing.

``MigrationEngine.start()`` / ``stop()`` is the loop's seam: a lone server runs it; of
several replicas the one that owns the ``migrations`` job (``xds_server.ha.owner``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from xds_server.changes import (
    Changes,
    Done,
    Invalid,
    OwnedByFile,
    Request,
    is_file_owned,
    owner_path,
)
from xds_server.config.model import ShardFile
from xds_server.loop import Loop
from xds_server.node_stats import TrafficSummary, cluster_summary
from xds_server.ops.wiring import WiringError, describe
from xds_server.store import ConfigStore, Conflict, RecordConflict, StoreError

from . import plan
from .model import RECORD_KIND, Migration
from .plan import Refused

log = logging.getLogger("xds_server.migrate")

_IDLE_S = 30.0
_NO_TRAFFIC_INTERVALS = 3  # a step with nothing to judge this long fails


Step = Callable[[Migration | None, ShardFile, int], Migration]
"""An operator's step: the stored migration, the shard's served config and its version →
the migration it becomes (or ``Refused``)."""


class MigrationEngine:
    def __init__(
        self, store: ConfigStore, changes: Changes, clock: Callable[[], float] = time.time
    ):
        self.store = store
        self.changes = changes
        self.clock = clock
        self._lock = asyncio.Lock()  # one actor on the records at a time, in this process
        self._loop = Loop("migrations", self.tick, log)

    # --- the loop's seam ----------------------------------------------------------------

    async def start(self) -> None:
        self._loop.start()

    async def stop(self) -> None:
        await self._loop.stop()

    def wake(self) -> None:
        self._loop.wake()

    # --- records --------------------------------------------------------------------

    async def get(self, shard: str) -> Migration | None:
        record = await self.store.get_record(RECORD_KIND, shard)
        return (
            None if record is None else Migration.from_json(json.loads(record.data), record.version)
        )

    async def migrations(self) -> list[Migration]:
        return [
            Migration.from_json(json.loads(r.data), r.version)
            for r in await self.store.list_records(RECORD_KIND)
        ]

    async def _save(self, m: Migration) -> Migration:
        data = json.dumps(m.to_json(), separators=(",", ":"))
        record = await self.store.put_record(
            RECORD_KIND, m.shard, data, base_version=m.record_version or None
        )
        return replace(m, record_version=record.version)

    async def _audit(self, actor: str, action: str, shard: str, accepted: bool, reason: str,
                     base: int | None = None, new: int | None = None) -> None:  # fmt: skip
        try:
            await self.store.append_audit(actor=actor, action=action, shard=shard, base_version=base,
                                          new_version=new, accepted=accepted, reason=reason[:500])  # fmt: skip
        except StoreError as e:
            log.error("event=audit_failed shard=%s action=%s error=%s", shard, action, e)

    # --- operators' steps ----------------------------------------------------------

    async def act(self, shard: str, action: str, actor: str, step: Step, *,
                  if_match: int | None = None) -> Migration:  # fmt: skip
        """Run one step: refused (one line, nothing changed) or stored, then wired."""
        try:
            async with self._lock:
                m = await self._step(shard, actor, step, if_match)
                stepped = bool(m.history) and m.history[-1]["at"] == m.updated_at  # not a runner's checkpoint
                if stepped:
                    m = await self.reconcile(m, actor)
        except Refused as e:
            await self._audit(actor, f"migration.{action}", shard, False, f"{e.status} {e}")
            raise
        if stepped:
            await self._audit(actor, f"migration.{action}", shard, True, m.history[-1]["what"])
            log.info("event=migration_step shard=%s action=%s phase=%s by=%s", shard, action, m.phase, actor)
            self.wake()
        return m

    async def _step(self, shard: str, actor: str, step: Step, if_match: int | None) -> Migration:
        state = self.changes.registry.shards.get(shard)
        head = await self.store.get(shard)
        if state is None or head is None:
            raise Refused(404, f"no shard {shard!r}")
        if is_file_owned(head.meta):
            raise Refused(409, f"shard {shard} is owned by file {owner_path(head.meta)}, which decides its wiring: "
                               "a migration rewires shards owned by the API (dgw apply)")  # fmt: skip
        current = await self.get(shard)
        if if_match is not None and (current is None or current.record_version != if_match):
            now = "there is no migration" if current is None else \
                f"it is at version {current.record_version} ({current.phase})"  # fmt: skip
            raise Refused(412, f"the migration of shard {shard} changed: the write was made from version "
                               f"{if_match} but {now}; read it again")  # fmt: skip
        m = step(current, state.config, head.meta.number)
        try:
            return await self._save(m)
        except RecordConflict as e:
            raise Refused(409, f"the migration of shard {shard} changed while this step was decided "
                               f"(another operator or the runner): {e}") from None  # fmt: skip

    # --- config -----------------------------------------------------------------------

    async def reconcile(self, m: Migration, actor: str | None = None) -> Migration:
        """Make the shard's wiring what the migration's phase needs (nothing if it is);
        the version made is recorded in the migration's last history entry. Called
        under ``_lock``, from the record as stored now (never an older copy's phase)."""
        for _ in range(3):
            m = await self.get(m.shard) or m
            state = self.changes.registry.shards.get(m.shard)
            head = await self.store.get(m.shard)
            if state is None or head is None:
                return m
            ops = plan.wiring_ops(state.config, m)
            if not ops:
                return m
            try:
                text = plan.apply_ops(head.text, ops)
            except WiringError as e:
                log.error(
                    "event=migration_wiring_refused shard=%s phase=%s error=%s", m.shard, m.phase, e
                )
                return m
            what = "; ".join(describe(op) for op in ops)
            who = actor or f"migration:{m.shard}"
            try:
                done = await self.changes.put(m.shard, text, head.meta.number,
                                              Request(who, f"migration {m.phase}: {what}"))  # fmt: skip
            except Conflict:
                continue  # someone changed the shard meanwhile: plan again from its head
            except (Invalid, OwnedByFile) as e:
                log.error(
                    "event=migration_wiring_refused shard=%s phase=%s error=%s", m.shard, m.phase, e
                )
                return m
            assert isinstance(done, Done)
            log.info("event=migration_wired shard=%s phase=%s version=%d ops=%r", m.shard, m.phase,
                     done.version.number, what)  # fmt: skip
            return await self._note_version(m, done.version.number)
        return m

    async def _note_version(self, m: Migration, version: int) -> Migration:
        for _ in range(3):
            current = await self.get(m.shard)
            if current is None or current.phase != m.phase or not current.history:
                return m
            last = dict(current.history[-1])
            last["version"] = version
            try:
                return await self._save(replace(current, history=(*current.history[:-1], last)))
            except RecordConflict:
                continue
        return m

    # --- the loop ---------------------------------------------------------------------

    async def tick(self) -> float:
        """Reconcile every running migration; move promotions. Seconds to the next look."""
        delay = _IDLE_S
        for m in await self.migrations():
            if not m.running:
                continue
            async with self._lock:
                m = await self.reconcile(m)
                if m.phase == "promoting" and m.promotion is not None:
                    delay = min(delay, await self._promotion(m.shard))
        return delay

    async def _promotion(self, shard: str) -> float:
        m = await self.get(shard)
        if m is None or m.phase != "promoting" or m.promotion is None:
            return _IDLE_S
        p, now = m.promotion, self.clock()
        if p.applied_at is None:
            m = await self.reconcile(m)
            await self._save(replace(m, promotion=replace(p, applied_at=now)))
            return p.interval_s
        due = p.applied_at + p.interval_s
        if now < due:
            return due - now
        old, new = self.traffic(shard, m.source, now - p.applied_at, now), \
            self.traffic(shard, m.target, now - p.applied_at, now)  # fmt: skip
        verdict = plan.judge(p, old, new, m.source, m.target)
        if verdict is None:
            if now < p.applied_at + p.interval_s * _NO_TRAFFIC_INTERVALS:
                return min(1.0, p.interval_s)
            verdict = plan.Verdict(False, f"step {p.index + 1} ({p.percent:g}%) failed: {m.target} answered "
                                          f"{new.requests} requests in {now - p.applied_at:.0f}s: nothing to "
                                          "judge it by (is traffic reaching the shard's gateways?)")  # fmt: skip
        actor = f"migration:{shard}"
        if verdict.passed:
            m = plan.step_passed(m, verdict.line, now=now)
            action = "migration.step.passed"
        else:
            m = plan.step_failed(m, verdict.line, now=now)
            action = "migration.step.failed"
            log.warning("event=migration_promotion_halted shard=%s verdict=%r", shard, verdict.line)
        m = await self._save(m)
        await self._audit(actor, action, shard, True, verdict.line)
        m = await self.reconcile(m)
        if m.phase == "promoting" and m.promotion is not None and m.promotion.applied_at is None:
            await self._save(replace(m, promotion=replace(m.promotion, applied_at=self.clock())))
            return m.promotion.interval_s
        return 0.0 if m.phase == "promoting" else _IDLE_S

    def traffic(self, shard: str, dal: str, seconds: float, now: float) -> TrafficSummary:
        """What ``dal``'s gRPC and HTTP clusters did over the last ``seconds``, summed
        over the shard's nodes and its listeners (p99: its busiest cluster's)."""
        state = self.changes.registry.shards.get(shard)
        window, _ = self.changes.registry.stats.window(shard, max(seconds, 0.1), now)
        names = (
            [u.name for u in state.ir.upstreams if u.dal == dal and u.protocol != "tcp"]
            if state
            else []
        )
        summaries = [cluster_summary(window, name) for name in names]
        requests = sum(s.requests for s in summaries)
        errors = sum(s.errors for s in summaries)
        busiest = max(summaries, key=lambda s: s.requests, default=None)
        return TrafficSummary(requests, requests / seconds if seconds > 0 else 0.0, errors,
                              errors / requests if requests else 0.0, busiest.p50_ms if busiest else None,
                              busiest.p99_ms if busiest else None, {})  # fmt: skip

    # --- what GET shows -------------------------------------------------------------------

    def endpoints(self, m: Migration) -> dict[str, list[str]]:
        """Where each DAL's gRPC listeners answer on the shard's hosts (the runner's
        Export/Import go there), from the nodes' reports."""
        state = self.changes.registry.shards.get(m.shard)
        out: dict[str, list[str]] = {"from": [], "to": []}
        if state is None:
            return out
        grpc = {(u.dal, u.listener) for u in state.ir.upstreams if u.protocol == "grpc"}
        for node in state.nodes.values():
            for e in node.report.endpoints:
                if (e.dal, e.listener) not in grpc or not e.port:
                    continue
                where = f"[{e.address}]:{e.port}" if ":" in e.address else f"{e.address}:{e.port}"
                for role, dal in (("from", m.source), ("to", m.target)):
                    if e.dal == dal and where not in out[role]:
                        out[role].append(where)
        return {k: sorted(v) for k, v in out.items()}

    def view(self, m: Migration) -> dict[str, Any]:
        data = m.to_json()
        data["version"] = m.record_version
        data["next"] = plan.next_step(m)
        data["endpoints"] = self.endpoints(m)
        data["progress"] = progress(m, self.clock())
        data["differences"] = plan.differences_left(m.verify) if m.verify else None
        data["runner_refusals"] = {step: plan.runner_refusal(m, step) for step in plan.RUNNER_STEPS}
        return data


def progress(m: Migration, now: float) -> dict[str, Any] | None:
    """The backfill's progress from the runner's checkpoint (``dgw.migrate.state``):
    items and bytes copied, the rate since it began, and percent and ETA once the
    runner has counted the source (``totals.source_items``)."""
    b = m.backfill
    if not b:
        return None
    totals = b.get("totals") if isinstance(b.get("totals"), dict) else {}
    assert isinstance(totals, dict)
    items = _number(totals.get("items"))
    started, updated = _number(b.get("started")), _number(b.get("updated"))
    elapsed = (updated if b.get("done") or not updated else max(updated, now)) - started if started else 0.0
    rate = items / elapsed if elapsed > 0 else 0.0
    expected = _number(totals.get("source_items"))
    out: dict[str, Any] = {"items": items, "bytes": _number(totals.get("bytes")), "items_per_s": round(rate, 1),
                           "done": bool(b.get("done"))}  # fmt: skip
    if expected:
        out["percent"] = round(min(100.0, 100.0 * items / expected), 1)
        out["eta_s"] = 0.0 if b.get("done") else (round(max(0.0, expected - items) / rate, 1) if rate > 0 else None)
    return out


def _number(value: Any) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0
