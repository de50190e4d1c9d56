"""The verify: compare the source DAL and the target namespace by namespace without
copying either to one place, name every differing item, and (``fix``) re-copy them.

1. **Counts and digests.** The source cuts the namespace into ``parts`` ranges of equal
   item counts (Split: a pass over its keys); both DALs digest those ranges at once
   (count and an order-independent hash over id, key, version and value, computed in
   their engines: one pass over the values each). The counts per namespace are the
   sums; every range equal: done.
2. **Narrowing.** A differing range is cut again (in 16, by the side with more items)
   and digested, until a range holds at most ``entries_limit`` items, whose Entries
   (position, version, hash) both sides list: the differences are named.
3. **Re-check.** A difference may be a live write on its way (the shadow copy lands on
   the target a moment after the source): each is read again on both sides after
   ``recheck_s``, up to ``rechecks`` times, and reported only if it stays.
4. **Fix** (``fix``): a missing or changed item is exported from the source and
   imported into the target as a repair (it also replaces damage under the same
   version); an extra item gets a tombstone at its own version. An item newer in the
   target is a write the source lacks: it is reported, never overwritten.

The report goes to the migration's state (section ``verify``) when one is given.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from dgw_api.migration.v1 import migration_pb2 as pb

from .dal_client import DalClient, Place, just, span
from .state import MigrationState, StateLost

log = logging.getLogger("dgw.migrate")

MISSING, EXTRA, CHANGED, TARGET_NEWER = "missing", "extra", "changed", "target_newer"
_KIND_TEXT = {
    MISSING: "missing in the target",
    EXTRA: "only in the target",
    CHANGED: "differs (the source's is newer or the same version)",
    TARGET_NEWER: "newer in the target (a write the source lacks; not overwritten)",
}


@dataclass(frozen=True)
class VerifyOptions:
    namespaces: Sequence[str] | None = None
    """None: every namespace the source serves."""
    fix: bool = False
    parts: int = 256
    """Ranges the first split cuts a differing namespace into."""
    entries_limit: int = 4096
    """A differing range with at most this many items is listed item by item."""
    recheck_s: float = 1.0
    rechecks: int = 3
    max_differences: int = 10_000
    """Stop naming differences past this many (the count goes on)."""


@dataclass
class Difference:
    namespace: str
    record_id: str
    key: bytes
    kind: str
    source: tuple[int, bytes] | None
    """(write time µs, writer) of the source's item; None: it has none."""
    target: tuple[int, bytes] | None
    fixed: bool = False

    def name(self) -> str:
        return f"{self.namespace}/{self.record_id}/{_show(self.key)}"

    def to_dict(self) -> dict[str, Any]:
        def version(v: tuple[int, bytes] | None) -> dict[str, Any] | None:
            return None if v is None else {"write_time_us": v[0], "writer": v[1].hex()}

        return {"namespace": self.namespace, "id": self.record_id, "key": _show(self.key), "key_hex": self.key.hex(),
                "kind": self.kind, "source": version(self.source), "target": version(self.target),
                "fixed": self.fixed}  # fmt: skip


@dataclass
class VerifyReport:
    namespaces: dict[str, Any] = field(default_factory=dict)
    """Per namespace: source_items, target_items, differences."""
    found: list[Difference] = field(default_factory=list)
    seconds: float = 0.0
    differences_total: int = 0
    """All differences, named or not (past ``max_differences``)."""

    @property
    def differences(self) -> int:
        return self.differences_total

    @property
    def fixed(self) -> int:
        return sum(d.fixed for d in self.found)

    def to_dict(self) -> dict[str, Any]:
        return {"differences": self.differences_total, "fixed": self.fixed,
                "found": [d.to_dict() for d in self.found], "namespaces": self.namespaces,
                "done": True, "seconds": round(self.seconds, 3), "checked_at": time.time()}  # fmt: skip

    def lines(self) -> list[str]:
        """The report for a person: one line per namespace, one per difference."""
        out = [f"{ns}: source {n['source_items']} items, target {n['target_items']}, "
               f"{n['differences']} difference(s)" for ns, n in sorted(self.namespaces.items())]  # fmt: skip
        for d in self.found:
            out.append(f"  {d.name()}: {_KIND_TEXT[d.kind]}" + (" — fixed" if d.fixed else ""))
        if self.differences_total > len(self.found):
            out.append(f"  ... and {self.differences_total - len(self.found)} more not named")
        return out


_Entry = tuple[int, bytes, bytes]  # write time, writer, hash


class _Verify:
    def __init__(self, src: DalClient, dst: DalClient, options: VerifyOptions, say: bool) -> None:
        self.src, self.dst, self.options, self.say = src, dst, options, say
        self.report = VerifyReport()

    def note(self, text: str) -> None:
        if self.say:
            print(f"verify: {text}", file=sys.stderr, flush=True)

    async def namespace(self, ns: str) -> None:
        # The first cut needs no count: the source splits the namespace (a pass over its
        # keys), both sides digest the parts (one pass each, at once); the namespace's
        # counts are the parts' sums, and it is equal when every part is.
        whole = span()
        pieces = _cut(whole, await self.src.split(ns, whole, self.options.parts))
        ds, dt = await asyncio.gather(self.src.digest(ns, pieces), self.dst.digest(ns, pieces))
        summary = {"source_items": sum(int(d.count) for d in ds), "target_items": sum(int(d.count) for d in dt),
                   "differences": 0}  # fmt: skip
        self.report.namespaces[ns] = summary
        self.note(f"{ns}: source {summary['source_items']} items, target {summary['target_items']}")
        level = [(p, int(a.count), int(b.count)) for p, a, b in zip(pieces, ds, dt, strict=True)
                 if (a.count, a.hash) != (b.count, b.hash)]  # fmt: skip
        listed: list[pb.Range] = []
        while level:
            self.note(f"{ns}: {len(level)} range(s) differ")
            narrower: list[tuple[pb.Range, int, int]] = []
            for r, n_src, n_dst in level:
                if max(n_src, n_dst) <= self.options.entries_limit:
                    listed.append(r)
                    continue
                cutter = self.src if n_src >= n_dst else self.dst
                parts = _cut(r, await cutter.split(ns, r, 16))
                if len(parts) < 2:
                    listed.append(r)
                    continue
                ds, dt = await asyncio.gather(
                    self.src.digest(ns, parts), self.dst.digest(ns, parts)
                )
                narrower += [(p, int(a.count), int(b.count)) for p, a, b in zip(parts, ds, dt, strict=True)
                             if (a.count, a.hash) != (b.count, b.hash)]  # fmt: skip
            level = narrower
        for r in listed:
            src_entries, dst_entries = await asyncio.gather(
                self._entries(self.src, ns, r), self._entries(self.dst, ns, r)
            )
            for place in sorted(src_entries.keys() | dst_entries.keys()):
                a, b = src_entries.get(place), dst_entries.get(place)
                if a != b:
                    self._differ(ns, place, a, b)

    async def _entries(self, dal: DalClient, ns: str, r: pb.Range) -> dict[Place, _Entry]:
        out: dict[Place, _Entry] = {}
        r = _copy(r)
        while True:
            answer = await dal.entries(ns, r, self.options.entries_limit)
            for e in answer.entries:
                out[(e.id, e.key)] = (e.write_time_us, e.writer, e.value_hash)
            if not answer.truncated or not answer.entries:
                return out
            last = answer.entries[-1]
            r.start.id, r.start.key = last.id, last.key + b"\0"

    def _differ(self, ns: str, place: Place, a: _Entry | None, b: _Entry | None) -> None:
        self.report.differences_total += 1
        self.report.namespaces[ns]["differences"] += 1
        if len(self.report.found) < self.options.max_differences:
            self.report.found.append(_difference(ns, place, a, b))

    async def recheck(self) -> None:
        """Drop the differences that a live write explains: gone on a later look."""
        for _ in range(self.options.rechecks):
            if not self.report.found:
                return
            await asyncio.sleep(self.options.recheck_s)
            still: list[Difference] = []
            for d in self.report.found:
                a, b = await asyncio.gather(self._one(self.src, d), self._one(self.dst, d))
                if a == b:
                    self.report.differences_total -= 1
                    self.report.namespaces[d.namespace]["differences"] -= 1
                else:
                    still.append(_difference(d.namespace, (d.record_id, d.key), a, b))
            self.report.found = still

    @staticmethod
    async def _one(dal: DalClient, d: Difference) -> _Entry | None:
        answer = await dal.entries(d.namespace, just(d.record_id, d.key), 1)
        if not answer.entries:
            return None
        e = answer.entries[0]
        return (e.write_time_us, e.writer, e.value_hash)

    async def fix(self) -> None:
        for d in self.report.found:
            if d.kind == TARGET_NEWER:
                continue
            if d.kind == EXTRA:
                assert d.target is not None
                page = pb.ExportPage()
                page.records.add(id=d.record_id).items.add(key=d.key, write_time_us=d.target[0], writer=d.target[1],
                                                           deleted=True)  # fmt: skip
                data = page.SerializeToString()
            else:
                data = (await self.src.export(d.namespace, range=just(d.record_id, d.key))).page
            await self.dst.import_page(d.namespace, data, repair=True)
            a, b = await asyncio.gather(self._one(self.src, d), self._one(self.dst, d))
            d.fixed = a == b
        self.note(f"fixed {self.report.fixed} of {len(self.report.found)}")


def _difference(ns: str, place: Place, a: _Entry | None, b: _Entry | None) -> Difference:
    if b is None:
        kind = MISSING
    elif a is None:
        kind = EXTRA
    elif (b[0], b[1]) > (a[0], a[1]):
        kind = TARGET_NEWER
    else:
        kind = CHANGED
    return Difference(
        ns, place[0], place[1], kind, (a[0], a[1]) if a else None, (b[0], b[1]) if b else None
    )


def _cut(r: pb.Range, bounds: list[Place]) -> list[pb.Range]:
    """``r`` cut at ``bounds`` (ascending, inside it)."""
    edges: list[Place | None] = [_place(r.start) if r.HasField("start") else None, *bounds,
                                 _place(r.end) if r.HasField("end") else None]  # fmt: skip
    return [span(a, b) for a, b in itertools.pairwise(edges)]


def _place(p: pb.Position) -> Place:
    return (p.id, p.key)


def _copy(r: pb.Range) -> pb.Range:
    out = pb.Range()
    out.CopyFrom(r)
    return out


def _show(key: bytes) -> str:
    try:
        text = key.decode()
    except UnicodeDecodeError:
        return "0x" + key.hex()
    return text if text.isprintable() else "0x" + key.hex()


async def run_verify(
    source: str,
    target: str,
    state: MigrationState | None = None,
    options: VerifyOptions = VerifyOptions(),
    *,
    progress: bool | None = None,
) -> VerifyReport:
    """Compare every namespace of the source DAL (gRPC ``host:port``) with the target's;
    with ``options.fix`` re-copy what differs. The report is saved to ``state``'s
    ``verify`` section when given. DalError if a DAL refuses."""
    started = time.monotonic()
    say = sys.stderr.isatty() if progress is None else progress
    async with DalClient(source, name="source") as src, DalClient(target, name="target") as dst:
        run = _Verify(src, dst, options, say)
        for ns in options.namespaces or await src.namespaces():
            await run.namespace(ns)
        await run.recheck()
        if options.fix:
            await run.fix()
    run.report.seconds = time.monotonic() - started
    if state is not None:
        for _ in range(3):
            await state.load()
            try:
                await state.save({"verify": run.report.to_dict()})
                break
            except StateLost:
                continue
    return run.report
