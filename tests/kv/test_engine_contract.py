"""The storage engine contract (``dals/kv/engines/base.py``), one suite for every engine
(``conftest.ENGINES``): versions and last-writer-wins, tombstones of keys and ranges,
atomic batches, chunks, order, purge, and concurrent writers converging."""

from __future__ import annotations

import asyncio
import random

from dals.kv.engines import CommitOutcome, Engine, KeyRange, Keys, Version
from dals.kv.engines.base import Batch, normalize

NS = "contract"


def v(t: int, writer: int = 1) -> Version:
    return Version(t, writer.to_bytes(16, "big"))


def puts(**items: str) -> Batch:
    return Batch(items=tuple(sorted((k.encode(), val.encode()) for k, val in items.items())))


async def values(engine: Engine, rid: str = "r", ns: str = NS) -> dict[str, str]:
    items = await engine.read_items(ns, rid, KeyRange(), None, 1000)
    return {i.key.decode(): (i.value or b"").decode() for i in items}


async def test_items_come_back_in_key_order_by_selection_and_position(engine: Engine) -> None:
    assert await engine.write(NS, "r", puts(b="2", a="1", d="4", c="3"), v(10)) == 4
    everything = await engine.read_items(NS, "r", KeyRange(), None, 100)
    assert [i.key for i in everything] == [b"a", b"b", b"c", b"d"]
    assert everything[0].version == v(10) and everything[0].size == 1 and everything[0].value == b"1"
    assert [i.key for i in await engine.read_items(NS, "r", KeyRange(b"b", b"d"), None, 100)] == [b"b", b"c"]
    assert [i.key for i in await engine.read_items(NS, "r", KeyRange(b"b"), None, 100)] == [b"b", b"c", b"d"]
    assert [i.key for i in await engine.read_items(NS, "r", KeyRange(), b"b", 2)] == [b"c", b"d"]
    assert [i.key for i in await engine.read_items(NS, "r", KeyRange(b"b"), b"a", 1)] == [b"b"]
    selected = await engine.read_items(NS, "r", Keys((b"a", b"c", b"zz")), None, 100)
    assert [i.key for i in selected] == [b"a", b"c"]
    assert [i.key for i in await engine.read_items(NS, "r", Keys((b"a", b"c", b"d")), b"a", 1)] == [b"c"]
    assert await engine.read_items(NS, "other", KeyRange(), None, 100) == []
    assert await engine.read_items("elsewhere", "r", KeyRange(), None, 100) == []


async def test_a_write_applies_once_and_the_newer_version_wins_in_any_order(engine: Engine) -> None:
    assert await engine.write(NS, "r", puts(k="new"), v(20)) == 1
    assert await engine.write(NS, "r", puts(k="new"), v(20)) == 0  # the same write again
    assert await engine.write(NS, "r", puts(k="old"), v(10)) == 0  # older, arriving late
    assert await values(engine) == {"k": "new"}
    # Equal times: the writer id decides, the same way on every engine.
    assert await engine.write(NS, "r", puts(k="tie-low"), v(20, 0)) == 0
    assert await engine.write(NS, "r", puts(k="tie-high"), v(20, 2)) == 1
    assert await values(engine) == {"k": "tie-high"}


async def test_a_deleted_key_keeps_a_tombstone_against_older_puts(engine: Engine) -> None:
    await engine.write(NS, "r", puts(k="1", keep="1"), v(10))
    assert await engine.write(NS, "r", Batch(items=((b"k", None),)), v(20)) == 1
    assert await values(engine) == {"keep": "1"}
    assert await engine.write(NS, "r", puts(k="late"), v(15)) == 0
    assert await values(engine) == {"keep": "1"}
    # A delete of a key that never existed leaves a tombstone too.
    assert await engine.write(NS, "r", Batch(items=((b"ghost", None),)), v(30)) == 1
    assert await engine.write(NS, "r", puts(ghost="late"), v(25)) == 0
    assert await engine.write(NS, "r", puts(k="newer"), v(40)) == 1
    assert await values(engine) == {"keep": "1", "k": "newer"}


async def test_a_deleted_range_removes_older_items_and_refuses_older_puts(engine: Engine) -> None:
    await engine.write(NS, "r", puts(a="1", b="1", c="1", d="1"), v(10))
    await engine.write(NS, "r", puts(c="newer"), v(30))
    assert await engine.write(NS, "r", Batch(ranges=(KeyRange(b"b", b"d"),)), v(20)) == 1  # b; c is newer
    assert await values(engine) == {"a": "1", "c": "newer", "d": "1"}
    assert await engine.write(NS, "r", puts(b="late", bb="late"), v(15)) == 0
    assert await engine.write(NS, "r", puts(b="after", d="after"), v(25)) == 2
    assert await values(engine) == {"a": "1", "b": "after", "c": "newer", "d": "after"}
    # The same range delete again changes nothing.
    assert await engine.write(NS, "r", Batch(ranges=(KeyRange(b"b", b"d"),)), v(20)) == 0


async def test_a_record_delete_and_a_put_in_one_batch_leave_only_the_put(engine: Engine) -> None:
    await engine.write(NS, "r", puts(a="1", b="1"), v(10))
    batch = normalize([(b"a", b"gone"), (KeyRange(), None), (b"b", b"kept")])
    assert batch.items == ((b"b", b"kept"),)
    assert await engine.write(NS, "r", batch, v(20)) == 3  # a and b removed, b set
    assert await values(engine) == {"b": "kept"}
    assert await engine.write(NS, "r", puts(a="late"), v(15)) == 0
    assert await engine.write(NS, "r", batch, v(20)) == 0  # the retry


async def test_chunks_commit_at_once_and_a_newer_value_replaces_them(engine: Engine) -> None:
    value = bytes(range(256)) * 40  # 10,240 bytes in chunks of 4,096
    parts = [(i, value[i * 4096:(i + 1) * 4096]) for i in range(3)]
    await engine.stage_chunks(NS, "r", b"big", v(10), parts[:2], 1)
    assert await engine.commit_chunks(NS, "r", b"big", v(10), 3, len(value)) is CommitOutcome.INCOMPLETE
    assert await values(engine) == {}  # staged chunks are invisible
    await engine.stage_chunks(NS, "r", b"other", v(10), parts, 1)
    assert await engine.commit_chunks(NS, "r", b"other", v(10), 3, len(value) + 1) is CommitOutcome.INCOMPLETE
    # The last chunk completes the commit that came early.
    assert await engine.stage_chunks(NS, "r", b"big", v(10), parts[2:], 1) is CommitOutcome.APPLIED
    [item] = await engine.read_items(NS, "r", KeyRange(), None, 10)
    assert (item.value, item.size, item.chunk_size, item.chunks) == (None, len(value), 4096, 3)
    assert b"".join(await engine.read_chunks(NS, "r", b"big", v(10), 0, 2) or []) == value
    assert await engine.read_chunks(NS, "r", b"big", v(10), 1, 1) == [parts[1][1]]
    # The same commit again: nothing changes, the value stays whole.
    assert await engine.commit_chunks(NS, "r", b"big", v(10), 3, len(value)) is CommitOutcome.SUPERSEDED
    assert b"".join(await engine.read_chunks(NS, "r", b"big", v(10), 0, 2) or []) == value
    # An older chunked write loses, and its chunks go.
    await engine.stage_chunks(NS, "r", b"big", v(5), parts, 1)
    assert await engine.commit_chunks(NS, "r", b"big", v(5), 3, len(value)) is CommitOutcome.SUPERSEDED
    assert await engine.read_chunks(NS, "r", b"big", v(5), 0, 2) is None
    # A newer inline value replaces the chunked one; its chunks can no longer be read.
    assert await engine.write(NS, "r", puts(big="small"), v(20)) == 1
    assert await values(engine) == {"big": "small"}
    assert await engine.read_chunks(NS, "r", b"big", v(10), 0, 2) is None
    # Chunks whose sizes do not line up are not a value.
    await engine.stage_chunks(NS, "r", b"odd", v(30), [(0, b"ab"), (1, b"abc")], 1)
    assert await engine.commit_chunks(NS, "r", b"odd", v(30), 2, 5) is CommitOutcome.INCOMPLETE


async def test_a_commit_that_comes_before_its_last_chunk_applies_when_the_chunk_does(engine: Engine) -> None:
    """What a shadow delivers: the mirrored calls of one write in any order."""
    assert await engine.stage_chunks(NS, "r", b"big", v(10), [(1, b"cd")], 1) is None
    assert await engine.commit_chunks(NS, "r", b"big", v(10), 2, 4) is CommitOutcome.INCOMPLETE
    assert await values(engine) == {}
    assert await engine.stage_chunks(NS, "r", b"big", v(10), [(0, b"ab")], 1) is CommitOutcome.APPLIED
    assert b"".join(await engine.read_chunks(NS, "r", b"big", v(10), 0, 1) or []) == b"abcd"
    # An early commit of an older write is superseded at once; its late chunk changes nothing.
    assert await engine.commit_chunks(NS, "r", b"big", v(5), 1, 2) is CommitOutcome.SUPERSEDED
    assert await engine.stage_chunks(NS, "r", b"big", v(5), [(0, b"zz")], 1) is None
    assert await engine.read_chunks(NS, "r", b"big", v(5), 0, 0) is None
    assert b"".join(await engine.read_chunks(NS, "r", b"big", v(10), 0, 1) or []) == b"abcd"
    # An intent whose chunks never come is purged with them.
    await engine.stage_chunks(NS, "r", b"lost", v(20), [(0, b"xx")], 1)
    assert await engine.commit_chunks(NS, "r", b"lost", v(20), 2, 3) is CommitOutcome.INCOMPLETE
    assert await engine.purge(tombstones_before_us=0, staged_before_us=50) == 2  # lost's and big's v5 chunk
    assert await engine.stage_chunks(NS, "r", b"lost", v(20), [(0, b"xx"), (1, b"y")], 100) is None


async def test_a_range_tombstone_supersedes_an_older_chunked_commit(engine: Engine) -> None:
    await engine.stage_chunks(NS, "r", b"big", v(10), [(0, b"xx"), (1, b"x")], 1)
    await engine.write(NS, "r", Batch(ranges=(KeyRange(),)), v(20))
    assert await engine.commit_chunks(NS, "r", b"big", v(10), 2, 3) is CommitOutcome.SUPERSEDED
    assert await values(engine) == {}


async def test_scan_walks_records_in_id_order_and_resumes_anywhere(engine: Engine) -> None:
    ids = ["z", "a", "B", "é", "日本", "a b", "ab"]
    for i, rid in enumerate(ids):
        await engine.write(NS, rid, puts(x="1", y="2"), v(10 + i))
    await engine.write(NS, "gone", puts(x="1"), v(5))
    await engine.write(NS, "gone", Batch(ranges=(KeyRange(),)), v(6))
    await engine.write("other", "a", puts(x="1"), v(5))
    everything = await engine.scan(NS, None, 100)
    order = sorted(ids, key=lambda s: s.encode())
    assert [(rid, i.key) for rid, i in everything] == [(rid, k) for rid in order for k in (b"x", b"y")]
    resumed, position = [], None
    while page := await engine.scan(NS, position, 3):
        resumed += page
        position = (page[-1][0], page[-1][1].key)
    assert [(r, i.key) for r, i in resumed] == [(r, i.key) for r, i in everything]


async def test_purge_drops_old_tombstones_and_abandoned_chunks_only(engine: Engine) -> None:
    await engine.write(NS, "r", puts(a="1", b="1"), v(10))
    await engine.write(NS, "r", Batch(items=((b"a", None),)), v(20))
    await engine.write(NS, "r", Batch(ranges=(KeyRange(b"x"),)), v(20))
    await engine.stage_chunks(NS, "r", b"abandoned", v(30), [(0, b"x")], 100)
    await engine.stage_chunks(NS, "r", b"kept", v(30), [(0, b"x")], 100)
    assert await engine.commit_chunks(NS, "r", b"kept", v(30), 1, 1) is CommitOutcome.APPLIED
    assert await engine.purge(tombstones_before_us=15, staged_before_us=50) == 0
    assert await engine.purge(tombstones_before_us=25, staged_before_us=200) == 3
    assert await values(engine) == {"b": "1", "kept": ""}
    assert await engine.read_chunks(NS, "r", b"kept", v(30), 0, 0) == [b"x"]
    # The tombstone is gone: a put as old as 15 now applies (the token window forbids it).
    assert await engine.write(NS, "r", puts(a="back"), v(15)) == 1


async def test_concurrent_writers_to_one_item_converge_to_the_newest(engine: Engine) -> None:
    rng = random.Random(7)
    versions = [v(rng.randrange(1000), rng.randrange(1 << 32)) for _ in range(40)]

    async def one(version: Version) -> None:
        ops = [(b"k", str(version.write_time_us).encode()), (b"w", version.writer)]
        if version.write_time_us % 3 == 0:
            ops.insert(0, (KeyRange(), None))  # some writers replace the whole record
        await engine.write(NS, "hot", normalize(ops), version)

    await asyncio.gather(*(one(x) for x in versions))
    newest = max(versions)
    items = {i.key: i for i in await engine.read_items(NS, "hot", KeyRange(), None, 10)}
    assert items[b"k"].value == str(newest.write_time_us).encode()
    assert items[b"w"].value == newest.writer and items[b"w"].version == newest
