"""The engine contract's migration operations (``engines/base.py``), on every engine:
export over spans with versions, import by last writer wins on the original version
(tombstones and range tombstones respected, twice = once, repair), and digests, splits
and entries that agree across engines for the same items."""

from __future__ import annotations

from dals.kv.engines import Engine, KeyRange, Version
from dals.kv.engines.base import Batch, Copied, Digest, Span, item_hash
from tests.kv.test_engine_contract import puts, v, values

NS = "contract"


async def _fill(engine: Engine) -> None:
    for i in range(5):
        await engine.write(NS, f"r{i}", puts(a=f"{i}a", b=f"{i}b"), v(10 + i))


async def test_export_pages_live_items_in_order_with_versions_inside_a_span(engine: Engine) -> None:
    await _fill(engine)
    await engine.write(NS, "r2", Batch(items=((b"a", None),)), v(50))  # a tombstone: not exported
    rows = await engine.export(NS, None, Span(), 100)
    assert [(r, i.key) for r, i in rows] == [
        ("r0", b"a"), ("r0", b"b"), ("r1", b"a"), ("r1", b"b"), ("r2", b"b"),
        ("r3", b"a"), ("r3", b"b"), ("r4", b"a"), ("r4", b"b")]  # fmt: skip
    assert rows[0][1].version == v(10) and rows[0][1].value == b"0a"
    page = await engine.export(NS, ("r1", b"a"), Span(("r1", b"a"), ("r3", b"b")), 3)
    assert [(r, i.key) for r, i in page] == [("r1", b"b"), ("r2", b"b"), ("r3", b"a")]
    inside = await engine.export(NS, None, Span(("r1", b"b"), ("r2", b"c")), 100)
    assert [(r, i.key) for r, i in inside] == [("r1", b"b"), ("r2", b"b")]


async def test_import_applies_by_the_original_version_and_twice_changes_nothing(
    engine: Engine,
) -> None:
    await engine.write(NS, "r", puts(new="live"), v(30))
    await engine.write(NS, "r", Batch(items=((b"gone", None),)), v(30))
    await engine.write(NS, "r", Batch(ranges=(KeyRange(b"x", b"y"),)), v(30))
    copies = [
        Copied("r", b"new", b"backfilled", v(20)),  # older than the live write
        Copied("r", b"gone", b"backfilled", v(20)),  # older than its tombstone
        Copied("r", b"xa", b"backfilled", v(20)),  # older than a range tombstone over it
        Copied("r", b"old", b"copied", v(20)),
        Copied("s", b"k", b"copied", v(25)),
    ]
    assert await engine.import_items(NS, copies, repair=False) == 2
    assert await values(engine) == {"new": "live", "old": "copied"}
    assert await values(engine, "s") == {"k": "copied"}
    assert await engine.import_items(NS, copies, repair=False) == 0
    # A newer copy wins; a live write newer than the copy wins afterwards too.
    assert (
        await engine.import_items(NS, [Copied("r", b"old", b"newer copy", v(40))], repair=False)
        == 1
    )
    assert await engine.write(NS, "r", puts(old="live again"), v(45)) == 1
    assert await values(engine) == {"new": "live", "old": "live again"}


async def test_repair_replaces_an_item_of_the_same_version_and_can_tombstone_it(
    engine: Engine,
) -> None:
    await engine.write(NS, "r", puts(k="damaged", extra="x"), v(20))
    same = Copied("r", b"k", b"right", v(20))
    assert await engine.import_items(NS, [same], repair=False) == 0
    assert (
        await engine.import_items(NS, [same, Copied("r", b"extra", None, v(20))], repair=True) == 2
    )
    assert await values(engine) == {"k": "right"}
    assert await engine.import_items(NS, [Copied("r", b"k", b"older", v(10))], repair=True) == 0


async def test_digests_count_and_hash_the_same_items_the_same_whatever_their_order(
    engine: Engine,
) -> None:
    await _fill(engine)
    everything, first, rest = await engine.digest(
        NS, [Span(), Span(None, ("r2", b"")), Span(("r2", b""), None)]
    )
    assert everything[0] == 10 and first[0] == 4 and rest[0] == 6
    expected = Digest()
    for i in reversed(range(5)):
        for key in (b"b", b"a"):
            expected.add(item_hash(f"r{i}", key, v(10 + i), f"{i}{key.decode()}".encode()))
    assert everything == expected.value()
    combined = Digest()
    combined.merge(first[0], int.from_bytes(first[1], "big"))
    combined.merge(rest[0], int.from_bytes(rest[1], "big"))
    assert combined.value() == everything
    await engine.write(NS, "r3", puts(a="changed"), v(13))  # same version, other value: not applied
    await engine.import_items(NS, [Copied("r3", b"a", b"changed", v(13))], repair=True)
    assert (await engine.digest(NS, [Span()]))[0] != everything
    assert (await engine.digest(NS, [Span(("zz", b""), None)]))[0] == (0, bytes(16))


async def test_split_cuts_a_span_into_parts_of_equal_counts_and_entries_name_items(
    engine: Engine,
) -> None:
    for i in range(20):
        await engine.write(NS, f"r{i:02}", puts(k="v"), v(10))
    bounds = await engine.split(NS, Span(), 4)
    assert bounds == [("r05", b"k"), ("r10", b"k"), ("r15", b"k")]
    assert await engine.split(NS, Span(("r05", b"k"), ("r10", b"k")), 2) == [("r08", b"k")]
    entries = await engine.entries(NS, Span(("r05", b"k"), ("r07", b"k")), 10)
    assert [(e.record_id, e.key, e.version, e.size) for e in entries] == [
        ("r05", b"k", v(10), 1), ("r06", b"k", v(10), 1)]  # fmt: skip
    assert entries[0].hash == item_hash("r05", b"k", v(10), b"v")
    assert len(await engine.entries(NS, Span(), 3)) == 3


async def test_chunked_values_hash_as_their_whole_value(engine: Engine) -> None:
    version = Version(10, bytes(16))
    await engine.stage_chunks(NS, "r", b"big", version, [(0, b"abc"), (1, b"de")], 1)
    await engine.commit_chunks(NS, "r", b"big", version, 2, 5)
    [entry] = await engine.entries(NS, Span(), 10)
    assert entry.hash == item_hash("r", b"big", version, b"abcde") and entry.size == 5
    [(n, h)] = await engine.digest(NS, [Span()])
    expected = Digest()
    expected.add(entry.hash)
    assert (n, h) == expected.value()
