"""The rollout reconcile loop: observe → step (pure) → act → record, for every
running rollout, inside the server.

``RolloutEngine.start()`` / ``stop()`` is the one seam through which the loop runs:
a server runs it at start; with several replicas, only the one that holds the
rollouts' lease should (the HA work starts and stops it as the lease comes and goes).
All state is in the config store (record kind ``rollout``, written with
compare-and-set), so whoever runs the loop next continues every rollout where it
stood. Acting is idempotent: a wave that was begun but not recorded as applied is
applied again, and a shard already at the rollout's version is left as it is.

Every shard change goes through the one change path (``xds_server.changes``): a
wave is one batch (all of its shards or none), a rollback is one batch back to the
versions the rollout began from, each with the pins they ran. Every step is in the
audit log (actor ``rollout:ID``): ``rollout.apply`` and ``rollout.rollback`` per
shard with its versions, ``rollout.start``, ``rollout.wave.passed``,
``rollout.wave.failed`` and the end.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from xds_server.changes import (
    BatchItem,
    BatchRefused,
    Changes,
    Done,
    Invalid,
    Request,
    is_file_owned,
)
from xds_server.deploy.artifacts import Pin, config_version, pins_from_json, pins_json, resolve
from xds_server.deploy.pins import recorded
from xds_server.loop import Loop
from xds_server.store import ConfigStore, RecordConflict, StoreError

from .model import (
    FINAL,
    INDEX_KIND,
    RECORD_KIND,
    TEXT_KIND,
    Options,
    Rollout,
    RolloutState,
    Target,
    Wave,
)
from .observe import observe
from .step import Begin, Fail, Finish, Pass, Taken, Wait, shards_to_observe, step, window_s
from .waves import Place, place_of, plan_waves

log = logging.getLogger("xds_server.deploy.rollout")

# Actions carried out in one pass for one rollout at most (each one records a state,
# so a pass never loops on a decision that does not move it).
_ACTIONS_PER_PASS = 8
_IDLE_S = 30.0  # with nothing in flight: look again this often all the same


class RolloutRefused(Exception):
    """A rollout cannot start (or change) as asked; ``status`` is the HTTP answer."""

    def __init__(self, status: int, message: str, details: Mapping[str, str] | None = None):
        super().__init__(message)
        self.status, self.details = status, dict(details or {})


@dataclass(frozen=True)
class StartRequest:
    """``files``: new shard texts by shard; ``resolve``: the shards (None: every one
    with a version set) whose ``artifacts`` (None: all of their DAL artifacts) are
    resolved again."""

    actor: str
    message: str
    options: Options
    files: Mapping[str, str] | None = None
    shards: Sequence[str] | None = None
    artifacts: Sequence[str] | None = None


class RolloutEngine:
    def __init__(self, store: ConfigStore, changes: Changes, clock: Callable[[], float] = time.time):
        self.store = store
        self.changes = changes
        self.clock = clock
        self._parsed: dict[str, Rollout] = {}
        self._loop = Loop("rollouts", self.tick, log)
        self._lock = asyncio.Lock()  # one actor on the records at a time
        # A wave's per-shard audit entries are written while its nodes take it and it
        # bakes (they are not on its critical path), and are done before the next step.
        self._auditing: asyncio.Task[None] | None = None

    # --- the seam ------------------------------------------------------------------

    async def start(self) -> None:
        """Run the loop (again) from what the store holds."""
        if self._loop.running:
            return
        self._loop.start()
        log.info("event=rollouts_started active=%d", len(await self._active()))

    async def stop(self) -> None:
        if self._auditing is not None:
            await self._auditing
            self._auditing = None
        await self._loop.stop()

    def wake(self) -> None:
        self._loop.wake()

    # --- one pass -----------------------------------------------------------------

    async def tick(self) -> float:
        """Move every active rollout as far as it can go now; seconds until the next look."""
        delay = _IDLE_S
        async with self._lock:
            for rollout_id in sorted(await self._active()):
                rollout = await self.get(rollout_id)
                if rollout is None or rollout.state in FINAL:
                    await self._set_active(rollout_id, False)
                    continue
                for _ in range(_ACTIONS_PER_PASS):
                    now = self.clock()
                    views = observe(self.changes.registry, shards_to_observe(rollout), window_s(rollout, now), now)
                    action = step(rollout, views, now)
                    if isinstance(action, Wait):
                        if action.until is not None:
                            delay = min(delay, max(0.0, action.until - now))
                        break
                    rollout = await self._act(rollout, action)
                    if rollout.state in FINAL:
                        await self._set_active(rollout_id, False)
                        break
                else:
                    delay = 0.0
        return delay

    async def _act(self, r: Rollout, action: Begin | Taken | Pass | Fail | Finish) -> Rollout:
        if self._auditing is not None and not isinstance(action, Taken):
            await self._auditing
            self._auditing = None
        now = self.clock()
        match action:
            case Begin(wave=index, baseline=baseline):
                return await self._begin(r, r.waves[index], baseline, now)
            case Taken(wave=index):
                wave = replace(r.waves[index], state="baking", synced_at=now)
                log.info("event=rollout_wave_taken rollout=%s wave=%d", r.id, index + 1)
                return await self._save(r.with_wave(wave))
            case Pass(wave=index, verdict=verdict):
                wave = replace(r.waves[index], state="passed", finished_at=now, verdict=verdict)
                await self._audit(r, "rollout.wave.passed", None, verdict)
                log.info("event=rollout_wave_passed rollout=%s wave=%d verdict=%r", r.id, index + 1, verdict)
                return await self._save(r.with_wave(wave))
            case Fail(wave=index, verdict=verdict, final=final):
                return await self._fail(r, r.waves[index], verdict, final, now)
            case Finish(state=state, outcome=outcome):
                await self._audit(r, f"rollout.{state}", None, outcome)
                log.info("event=rollout_finished rollout=%s state=%s outcome=%r", r.id, state, outcome)
                return await self._save(replace(r, state=state, outcome=outcome, finished_at=now))

    async def _begin(self, r: Rollout, wave: Wave, baseline: Any, now: float) -> Rollout:
        if wave.state == "pending":
            wave = replace(wave, state="applying", started_at=now, baseline=baseline)
            r = await self._save(r.with_wave(wave))
            log.info("event=rollout_wave_begin rollout=%s wave=%d tier=%d location=%s shards=%d",
                     r.id, wave.index + 1, wave.tier, wave.location, len(wave.shards))  # fmt: skip
        items: list[BatchItem] = []
        for shard in wave.shards:
            t = r.targets[shard]
            head = await self.store.get(shard)
            ours = head is not None and head.meta.author == _actor(r) and head.meta.number > t.from_version
            if head is None or (head.meta.number != t.from_version and not ours):
                now_at = "deleted" if head is None else f"at version {head.meta.number} by {head.meta.author}"
                return await self._fail(r, wave, f"{wave.name} failed: shard {shard} was changed since the "
                                                  f"rollout began from version {t.from_version} (now {now_at})",
                                        "failed", now)  # fmt: skip
            items.append(BatchItem(shard, await self._new_text(r, t), head.meta.number, self._pins(r, t)))
        try:
            outcomes = await self.changes.put_many(
                items, Request(_actor(r), f"rollout {r.id} {wave.name}" + (f": {r.message}" if r.message else ""))
            )
        except BatchRefused as e:
            why = "; ".join(f"{s}: {err}" for s, err in sorted(e.refused.items()))[:1000]
            return await self._fail(r, wave, f"{wave.name} failed: refused: {why}", "failed", now)
        targets: dict[str, Target] = {}
        for item, outcome in zip(items, outcomes, strict=True):
            assert isinstance(outcome, Done)
            served = self.changes.registry.shards.get(item.shard)
            t = r.targets[item.shard]
            targets[item.shard] = replace(t, applied_version=outcome.version.number,
                                          config_version=served.config_version if served else None)  # fmt: skip
        wave = replace(wave, applied_at=self.clock())
        r = await self._save(r.with_targets(targets).with_wave(wave))
        entries = [(s, r.targets[s].from_version, t.applied_version) for s, t in targets.items()]
        self._auditing = asyncio.create_task(self._audit_applies(r, wave.name, entries))
        return r

    async def _audit_applies(self, r: Rollout, wave: str, entries: list[tuple[str, int, int | None]]) -> None:
        for shard, base, new in entries:
            await self._audit(r, "rollout.apply", shard, wave, base, new)

    async def _fail(self, r: Rollout, wave: Wave, verdict: str, final: RolloutState, now: float) -> Rollout:
        """Roll the wave's changed shards back to the versions the rollout began from."""
        items: list[BatchItem] = []
        for shard in wave.shards:
            t = r.targets[shard]
            head = await self.store.get(shard)
            if head is None or head.meta.number == t.from_version or head.meta.author != _actor(r):
                continue  # never changed by us (or changed by someone else since: theirs stays)
            back = await self.store.version(shard, t.from_version)
            if back is None:
                continue
            pins = await self.changes.version_sets.stored(shard, t.from_version)
            items.append(BatchItem(shard, back.text, head.meta.number, pins))
        targets: dict[str, Target] = {}
        note = ""
        if items:
            try:
                outcomes = await self.changes.put_many(
                    items, Request(_actor(r), f"rollout {r.id}: {verdict}"[:1000]), source="rollback"
                )
            except (BatchRefused, Invalid) as e:
                note = f"; the rollback was refused: {e}"
                outcomes = []
            for item, outcome in zip(items, outcomes, strict=False):
                assert isinstance(outcome, Done)
                t = r.targets[item.shard]
                targets[item.shard] = replace(t, rolled_back_version=outcome.version.number)
                await self._audit(r, "rollout.rollback", item.shard, f"{wave.name}: back to version "
                                  f"{t.from_version}", item.base, outcome.version.number)  # fmt: skip
        if targets:
            note += f"; rolled back: {', '.join(f'{s} to version {r.targets[s].from_version}' for s in sorted(targets))}"
        state: RolloutState = "aborted" if final == "aborted" else "failed"
        wave = replace(wave, state="rolled_back" if targets else "failed", finished_at=now, verdict=verdict + note)
        outcome_text = verdict + note
        await self._audit(r, f"rollout.{state}", None, outcome_text)
        log.warning("event=rollout_wave_failed rollout=%s wave=%d state=%s verdict=%r", r.id, wave.index + 1,
                    state, outcome_text)  # fmt: skip
        r = r.with_targets(targets).with_wave(wave)
        return await self._save(replace(r, state=state, outcome=outcome_text, finished_at=now))

    async def _new_text(self, r: Rollout, t: Target) -> str:
        if t.new_text:
            record = await self.store.get_record(TEXT_KIND, f"{r.id}.{t.shard}")
            if record is None:
                raise StoreError(f"rollout {r.id}: the new file of shard {t.shard} is missing from the store")
            return str(json.loads(record.data)["text"])
        back = await self.store.version(t.shard, t.from_version)
        if back is None:
            raise StoreError(f"rollout {r.id}: version {t.from_version} of shard {t.shard} is missing")
        return back.text

    def _pins(self, r: Rollout, t: Target) -> dict[str, Pin] | None:
        return None if t.pins is None else pins_from_json(r.pinsets[t.pins])

    # --- records -----------------------------------------------------------------

    async def get(self, rollout_id: str) -> Rollout | None:
        record = await self.store.get_record(RECORD_KIND, rollout_id)
        if record is None:
            return None
        # A rollout of a thousand shards is a big record, read every few hundred ms
        # while a wave is in flight: parsed again only when it changed.
        known = self._parsed.get(rollout_id)
        if known is not None and known.record_version == record.version:
            return known
        rollout = Rollout.from_json(json.loads(record.data), record.version)
        self._parsed[rollout_id] = rollout
        return rollout

    async def rollouts(self) -> list[Rollout]:
        records = await self.store.list_records(RECORD_KIND)
        return sorted((Rollout.from_json(json.loads(r.data), r.version) for r in records),
                      key=lambda r: r.created_at)  # fmt: skip

    async def _active(self) -> list[str]:
        """The rollouts still running (a small record, read by whichever replica runs the loop)."""
        record = await self.store.get_record(INDEX_KIND, "active")
        return list(json.loads(record.data)["running"]) if record is not None else []

    async def _set_active(self, rollout_id: str, running: bool) -> None:
        for _ in range(5):
            record = await self.store.get_record(INDEX_KIND, "active")
            ids = set(json.loads(record.data)["running"]) if record is not None else set()
            if (rollout_id in ids) == running:
                return
            ids = ids | {rollout_id} if running else ids - {rollout_id}
            try:
                await self.store.put_record(INDEX_KIND, "active", json.dumps({"running": sorted(ids)}),
                                            base_version=None if record is None else record.version)  # fmt: skip
                return
            except RecordConflict:
                continue
        raise StoreError("the index of running rollouts kept changing; try again")

    async def _save(self, r: Rollout) -> Rollout:
        data = json.dumps(r.to_json(), separators=(",", ":"))
        record = await self.store.put_record(RECORD_KIND, r.id, data,
                                             base_version=r.record_version or None)  # fmt: skip
        saved = replace(r, record_version=record.version)
        if r.state in FINAL:
            self._parsed.pop(r.id, None)
        else:
            self._parsed[r.id] = saved
        return saved

    async def _audit(self, r: Rollout, action: str, shard: str | None, reason: str,
                     base: int | None = None, new: int | None = None) -> None:  # fmt: skip
        try:
            await self.store.append_audit(actor=_actor(r), action=action, shard=shard, base_version=base,
                                          new_version=new, accepted=True, reason=reason[:500])  # fmt: skip
        except StoreError as e:
            log.error("event=audit_failed rollout=%s action=%s error=%s", r.id, action, e)

    # --- operators --------------------------------------------------------------

    async def create(self, request: StartRequest) -> Rollout:
        """Check the request, plan its waves and store it; the loop takes it from there."""
        async with self._lock:
            busy = {s: r.id for r in await self.rollouts() if r.state not in FINAL for s in r.targets}
            targets, pinsets, texts = (
                await self._file_targets(request) if request.files is not None else await self._resolve_targets(request)
            )
            clash = {s: f"already in rollout {busy[s]}" for s in targets if s in busy}
            if clash:
                raise RolloutRefused(409, f"{len(clash)} shards are in a running rollout", clash)
            waves = plan_waves({s: Place(t.tier, t.location) for s, t in targets.items()}, request.options.wave_size)
            rollout_id = await self._new_id()
            r = Rollout(rollout_id, self.clock(), request.actor, request.message,
                        "files" if request.files is not None else "resolve", request.options, waves, targets,
                        tuple(tuple(p) for p in pinsets))  # fmt: skip
            for shard, text in texts.items():
                await self.store.put_record(TEXT_KIND, f"{rollout_id}.{shard}", json.dumps({"text": text}),
                                            base_version=None)  # fmt: skip
            r = await self._save(r)
            await self._audit(r, "rollout.start", None, f"{len(targets)} shards in {len(waves)} waves: "
                              + ", ".join(w.name for w in waves))  # fmt: skip
            await self._set_active(rollout_id, True)
        log.info("event=rollout_started rollout=%s by=%s shards=%d waves=%d", r.id, r.created_by,
                 len(targets), len(waves))  # fmt: skip
        self.wake()
        return r

    async def _file_targets(self, request: StartRequest) -> tuple[dict[str, Target], list[Any], dict[str, str]]:
        assert request.files is not None
        if not request.files:
            raise RolloutRefused(400, "a rollout needs at least one shard file")
        refused: dict[str, str] = {}
        targets: dict[str, Target] = {}
        texts: dict[str, str] = {}
        items: list[BatchItem] = []
        for shard, text in sorted(request.files.items()):
            head = await self.store.get(shard)
            if head is None:
                refused[shard] = "no such shard: a rollout changes existing shards (create it with dgw apply)"
                continue
            if is_file_owned(head.meta):
                refused[shard] = f"owned by {head.meta.owner}: edit its file instead"
                continue
            items.append(BatchItem(shard, text, head.meta.number))
        if refused:
            raise RolloutRefused(400, f"{len(refused)} of the rollout's shards refused", refused)
        try:
            await self.changes.put_many(items, Request(request.actor, dry_run=True))
        except BatchRefused as e:
            raise RolloutRefused(400, f"{len(e.refused)} of the rollout's shards refused",
                                 {s: str(err) for s, err in e.refused.items()}) from None  # fmt: skip
        # Parsed off the loop (a rollout may carry a hundred files), as a change is.
        parsed = await asyncio.to_thread(lambda: [self.changes.check_text(i.text, i.shard) for i in items])
        for item, loaded in zip(items, parsed, strict=True):
            head = await self.store.get(item.shard)
            assert head is not None
            if head.text == item.text:
                continue  # already what it runs
            served = self.changes.registry.shards.get(item.shard)
            new = loaded.config.deploy_desires if not isinstance(loaded, Exception) else None
            old = served.config.deploy_desires if served is not None else None
            place, before = place_of(new), place_of(old)
            tier = min(place.tier, before.tier)  # a change of tier goes with the more critical one
            targets[item.shard] = Target(item.shard, tier, place.location, _owners(new or old),
                                         head.meta.number, True)  # fmt: skip
            texts[item.shard] = item.text
        if not targets:
            raise RolloutRefused(400, "nothing to roll out: every file is what its shard runs already")
        return targets, [], texts

    async def _resolve_targets(self, request: StartRequest) -> tuple[dict[str, Target], list[Any], dict[str, str]]:
        registry = self.changes.registry
        names = list(request.shards) if request.shards else sorted(
            s for s, st in registry.shards.items()
            if st.config.deploy_desires is not None and st.config.deploy_desires.version_set.artifacts
        )  # fmt: skip
        index = await self.changes.version_sets.snapshot()
        refused: dict[str, str] = {}
        targets: dict[str, Target] = {}
        pinsets: list[list[dict[str, str]]] = []
        for shard in names:
            head, served = await self.store.get(shard), registry.shards.get(shard)
            if head is None or served is None:
                refused[shard] = "no such shard"
                continue
            if is_file_owned(head.meta):
                refused[shard] = f"owned by {head.meta.owner}: a rollout re-resolves API-owned shards only"
                continue
            desires = served.config.deploy_desires
            if desires is None or not desires.version_set.artifacts:
                if request.shards:
                    refused[shard] = "it has no version set to resolve"
                continue
            wanted = set(request.artifacts or [k for k in desires.version_set.artifacts if k.startswith("dals/")])
            held = {k: p for k, p in recorded(served.pins).items() if k not in wanted}
            fresh, problems = resolve(desires.version_set, index, config_version(head.text), shard, held)
            if problems:
                refused[shard] = "; ".join(str(p) for p in problems)
                continue
            if recorded(fresh) == recorded(served.pins):
                continue  # already runs what its version set names now
            pinset = pins_json(recorded(fresh))
            if pinset not in pinsets:
                pinsets.append(pinset)
            place = place_of(desires)
            targets[shard] = Target(shard, place.tier, place.location, _owners(desires), head.meta.number,
                                    False, pinsets.index(pinset))  # fmt: skip
        if refused:
            raise RolloutRefused(400, f"{len(refused)} of the rollout's shards refused", refused)
        if not targets:
            raise RolloutRefused(400, "nothing to roll out: every shard runs what its version set names now")
        return targets, pinsets, {}

    async def _new_id(self) -> str:
        taken = {r.name for r in await self.store.list_records(RECORD_KIND)}
        n = len(taken) + 1
        while f"r{n}" in taken:
            n += 1
        return f"r{n}"

    async def change(self, rollout_id: str, what: str, actor: str) -> Rollout:
        """``pause``, ``resume`` or ``abort``, recorded with compare-and-set."""
        async with self._lock:
            for _ in range(5):
                r = await self.get(rollout_id)
                if r is None:
                    raise RolloutRefused(404, f"no rollout {rollout_id!r}; dgw rollout list shows them")
                if r.state in FINAL:
                    raise RolloutRefused(409, f"rollout {rollout_id} has ended ({r.state}): {r.outcome}")
                updated = {"pause": replace(r, paused=True), "resume": replace(r, paused=False),
                           "abort": replace(r, abort_requested=actor)}[what]  # fmt: skip
                try:
                    saved = await self._save(updated)
                except RecordConflict:
                    continue
                await self._audit(r, f"rollout.{what}", None, f"by {actor}")
                log.info("event=rollout_%s rollout=%s by=%s", what, rollout_id, actor)
                self.wake()
                return saved
        raise RolloutRefused(409, f"rollout {rollout_id} kept changing; try again")


def _actor(r: Rollout) -> str:
    return f"rollout:{r.id}"


def _owners(desires: Any) -> tuple[str, ...]:
    return tuple(f"{o.type} {o.value}" for o in desires.owners) if desires is not None else ()
