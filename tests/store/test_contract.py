"""What every config store backend must do (run per backend by the ``store`` fixture)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from xds_server.store import (
    API_OWNER,
    ConfigStore,
    Conflict,
    NotFound,
    RecordConflict,
    ShardVersion,
    Version,
    Write,
    content_hash,
    file_owner,
    rollback,
)

# Generous: only a hung watch waits this long.
WATCH_TIMEOUT = 10.0


def shard_text(n: int) -> str:
    return f"container_dals:\n  thrift:\n    image: dal:{n}\nwiring: {{}}\n"


async def put(
    store: ConfigStore, shard: str, n: int, base: int | None, author: str = "alice"
) -> Version:
    return await store.put(
        shard,
        shard_text(n),
        base_version=base,
        author=author,
        message=f"edit {n}",
        source="api",
        owner=API_OWNER,
    )


async def next_of(changes: AsyncIterator[ShardVersion]) -> ShardVersion:
    return await asyncio.wait_for(anext(changes), WATCH_TIMEOUT)


async def test_a_put_is_stored_as_written_with_its_metadata(store: ConfigStore) -> None:
    text = "# kept as written, comments and all\nwiring: {}   \n"
    before = datetime.now(UTC)
    v1 = await store.put(
        "demo", text, base_version=None, author="file:/etc/dgw/demo.yaml", message="", source="file",
        owner=file_owner("/etc/dgw/demo.yaml"),
    )  # fmt: skip
    after = datetime.now(UTC)
    assert (v1.shard, v1.number, v1.author, v1.source, v1.owner, v1.deleted) == (
        "demo", 1, "file:/etc/dgw/demo.yaml", "file", "file:/etc/dgw/demo.yaml", False,
    )  # fmt: skip
    assert v1.content_hash == content_hash(text)
    assert v1.at.utcoffset() == timedelta(0) and before - timedelta(
        seconds=1
    ) <= v1.at <= after + timedelta(seconds=1)
    got = await store.get("demo")
    assert got is not None
    assert got.text == text and got.meta == v1
    assert await store.get("other") is None


async def test_each_put_numbers_the_next_version_of_its_shard(store: ConfigStore) -> None:
    a1 = await put(store, "a", 1, None)
    b1 = await put(store, "b", 1, None)
    a2 = await put(store, "a", 2, a1.number)
    a3 = await put(store, "a", 3, a2.number)
    assert [a1.number, a2.number, a3.number, b1.number] == [1, 2, 3, 1]
    assert a1.revision < b1.revision < a2.revision < a3.revision  # one store-wide order
    got = await store.get("a")
    assert got is not None and got.text == shard_text(3) and got.meta == a3


async def test_a_stale_base_is_refused_with_the_current_version(store: ConfigStore) -> None:
    v1 = await put(store, "demo", 1, None)
    v2 = await put(store, "demo", 2, v1.number)
    with pytest.raises(Conflict) as refused:
        await put(store, "demo", 3, v1.number)
    assert refused.value.current == v2 and refused.value.current_version == 2
    assert refused.value.base_version == 1
    assert "current version is 2" in str(refused.value)
    with pytest.raises(Conflict) as exists:
        await put(store, "demo", 3, None)  # "create" a shard that exists
    assert exists.value.current_version == 2
    with pytest.raises(Conflict) as missing:
        await put(store, "nothing", 1, 4)  # "update" a shard that does not exist
    assert missing.value.current is None and missing.value.current_version is None
    got = await store.get("demo")
    assert got is not None and got.meta == v2  # nothing refused was stored
    assert len(await store.history("demo")) == 2


async def test_conflicting_edits_from_one_base_exactly_one_wins(store: ConfigStore) -> None:
    base = await put(store, "demo", 0, None)
    results = await asyncio.gather(
        *(put(store, "demo", n, base.number, author=f"op{n}") for n in range(1, 9)),
        return_exceptions=True,
    )
    won = [r for r in results if isinstance(r, Version)]
    refused = [r for r in results if isinstance(r, Conflict)]
    assert len(won) == 1 and len(refused) == 7, results
    assert all(c.current == won[0] and c.current_version == 2 for c in refused)
    got = await store.get("demo")
    assert got is not None and got.meta == won[0] and got.text == shard_text(int(won[0].author[2:]))


async def test_concurrent_creates_of_one_shard_exactly_one_wins(store: ConfigStore) -> None:
    results = await asyncio.gather(
        *(put(store, "new", n, None) for n in range(5)), return_exceptions=True
    )
    assert sum(isinstance(r, Version) for r in results) == 1
    assert sum(isinstance(r, Conflict) for r in results) == 4


async def test_history_is_newest_first_and_pages_with_before(store: ConfigStore) -> None:
    base = None
    for n in range(1, 8):
        base = (await put(store, "demo", n, base)).number
    await put(store, "other", 1, None)
    assert [v.number for v in await store.history("demo")] == [7, 6, 5, 4, 3, 2, 1]
    page1 = await store.history("demo", limit=3)
    page2 = await store.history("demo", limit=3, before=page1[-1].number)
    page3 = await store.history("demo", limit=3, before=page2[-1].number)
    assert [[v.number for v in p] for p in (page1, page2, page3)] == [[7, 6, 5], [4, 3, 2], [1]]
    assert await store.history("demo", before=1) == ()
    assert await store.history("unknown") == ()
    assert all(v.shard == "demo" and v.message == f"edit {v.number}" for v in page1 + page2 + page3)
    with pytest.raises(ValueError):
        await store.history("demo", limit=0)


async def test_any_version_is_readable_with_its_text(store: ConfigStore) -> None:
    v1 = await put(store, "demo", 1, None)
    await put(store, "demo", 2, v1.number)
    old = await store.version("demo", 1)
    assert old is not None and old.meta == v1 and old.text == shard_text(1)
    assert old.meta.content_hash == content_hash(old.text)
    assert await store.version("demo", 3) is None
    assert await store.version("unknown", 1) is None


async def test_delete_leaves_a_tombstone_and_keeps_history(store: ConfigStore) -> None:
    v1 = await put(store, "demo", 1, None)
    v2 = await put(store, "demo", 2, v1.number)
    await put(store, "kept", 1, None)
    with pytest.raises(Conflict) as stale:
        await store.delete("demo", base_version=1, author="bob", message="gone")
    assert stale.value.current_version == 2
    gone = await store.delete("demo", base_version=v2.number, author="bob", message="gone")
    assert (gone.number, gone.deleted, gone.author, gone.owner, gone.source) == (
        3,
        True,
        "bob",
        API_OWNER,
        "api",
    )
    assert gone.content_hash == content_hash("")
    assert await store.get("demo") is None
    assert [e.meta.shard for e in (await store.list()).shards] == ["kept"]
    assert [v.number for v in await store.history("demo")] == [3, 2, 1]
    tombstone = await store.version("demo", 3)
    assert tombstone is not None and tombstone.meta.deleted and tombstone.text == ""
    with pytest.raises(NotFound, match="already deleted"):
        await store.delete("demo", base_version=3, author="bob", message="again")
    with pytest.raises(NotFound, match="does not exist"):
        await store.delete("unknown", base_version=1, author="bob", message="")
    # Re-created, it carries on numbering; the tombstone's number is as good a base as None.
    with pytest.raises(Conflict):
        await put(store, "demo", 4, 2)
    again = await put(store, "demo", 4, None)
    assert again.number == 4 and not again.deleted
    gone = await store.delete("demo", base_version=4, author="bob", message="")
    assert (await put(store, "demo", 6, gone.number)).number == 6


async def test_rollback_stores_an_old_text_as_a_new_version(store: ConfigStore) -> None:
    v1 = await put(store, "demo", 1, None)
    v2 = await put(store, "demo", 2, v1.number)
    back = await rollback(store, "demo", 1, base_version=v2.number, author="carol", owner=API_OWNER)
    assert (back.number, back.source, back.author, back.message) == (
        3,
        "rollback",
        "carol",
        "rollback to version 1",
    )
    assert back.content_hash == v1.content_hash
    got = await store.get("demo")
    assert got is not None and got.text == shard_text(1)
    with pytest.raises(Conflict):
        await rollback(store, "demo", 2, base_version=v2.number, author="carol", owner=API_OWNER)
    with pytest.raises(NotFound, match="no version 9"):
        await rollback(store, "demo", 9, base_version=back.number, author="carol", owner=API_OWNER)
    gone = await store.delete("demo", base_version=back.number, author="carol", message="")
    with pytest.raises(NotFound, match="deletion"):
        await rollback(
            store, "demo", gone.number, base_version=gone.number, author="carol", owner=API_OWNER
        )
    undeleted = await rollback(
        store, "demo", 2, base_version=None, author="carol", owner=API_OWNER, message="undo"
    )
    assert (undeleted.number, undeleted.message) == (5, "undo")
    got = await store.get("demo")
    assert got is not None and got.text == shard_text(2)


async def test_list_gives_every_live_shard_and_the_revision_read_at(store: ConfigStore) -> None:
    assert await store.list() == type(await store.list())(0, ())
    await put(store, "b", 1, None)
    a1 = await put(store, "a", 1, None)
    a2 = await put(store, "a", 2, a1.number)
    listing = await store.list()
    assert listing.revision == a2.revision
    assert [(e.meta.shard, e.meta.number, e.text) for e in listing.shards] == [
        ("a", 2, shard_text(2)), ("b", 1, shard_text(1)),
    ]  # fmt: skip


async def test_watch_replays_from_a_revision_then_follows_live(store: ConfigStore) -> None:
    a1 = await put(store, "a", 1, None)
    b1 = await put(store, "b", 1, None)
    changes = store.watch(0)
    try:
        assert [(await next_of(changes)).meta for _ in range(2)] == [a1, b1]
        a2 = await put(store, "a", 2, a1.number)  # written while the watch waits
        got = await next_of(changes)
        assert got.meta == a2 and got.text == shard_text(2)
        gone = await store.delete("b", base_version=b1.number, author="bob", message="")
        tombstone = await next_of(changes)
        assert tombstone.meta == gone and tombstone.meta.deleted
    finally:
        await changes.aclose()


async def test_a_watch_resumes_from_the_last_revision_seen_without_gaps(store: ConfigStore) -> None:
    written = []
    base = None
    for n in range(1, 6):
        written.append(await put(store, "demo", n, base))
        base = written[-1].number
    first = store.watch(0)
    seen = [(await next_of(first)).meta for _ in range(2)]
    await first.aclose()  # the watcher goes away ...
    for n in range(6, 9):  # ... the store moves on ...
        written.append(await put(store, "demo", n, base))
        base = written[-1].number
    resumed = store.watch(seen[-1].revision)  # ... and it comes back
    try:
        seen += [(await next_of(resumed)).meta for _ in range(len(written) - 2)]
    finally:
        await resumed.aclose()
    assert seen == written


async def test_list_then_watch_from_its_revision_misses_nothing(store: ConfigStore) -> None:
    await put(store, "a", 1, None)
    listing = await store.list()
    changes = store.watch(listing.revision)
    try:
        b1 = await put(store, "b", 1, None)
        assert (await next_of(changes)).meta == b1  # not a replay of what the listing held
    finally:
        await changes.aclose()


async def test_many_watchers_each_see_every_change(store: ConfigStore) -> None:
    watchers = [store.watch(0) for _ in range(3)]

    async def collect(changes: AsyncIterator[ShardVersion], count: int) -> list[int]:
        return [(await next_of(changes)).meta.number for _ in range(count)]

    tasks = [asyncio.create_task(collect(w, 20)) for w in watchers]
    base = None
    for n in range(1, 21):
        base = (await put(store, "demo", n, base)).number
    try:
        assert await asyncio.gather(*tasks) == [list(range(1, 21))] * 3
    finally:
        for w in watchers:
            await w.aclose()


async def test_the_audit_log_keeps_accepted_and_refused_attempts(store: ConfigStore) -> None:
    ok = await store.append_audit(
        actor="alice", action="put", shard="demo", base_version=1, new_version=2, accepted=True
    )
    refused = await store.append_audit(
        actor="anonymous", action="wiring.promote", shard="demo", base_version=1, new_version=None,
        accepted=False, reason="no token",
    )  # fmt: skip
    other = await store.append_audit(
        actor="admin",
        action="token.create",
        shard=None,
        base_version=None,
        new_version=None,
        accepted=True,
    )
    assert ok.id < refused.id < other.id
    assert (ok.actor, ok.action, ok.shard, ok.base_version, ok.new_version, ok.accepted, ok.reason) == (
        "alice", "put", "demo", 1, 2, True, "",
    )  # fmt: skip
    assert (refused.accepted, refused.reason, refused.new_version) == (False, "no token", None)
    assert ok.at.utcoffset() == timedelta(0)
    assert await store.audit_log() == (other, refused, ok)
    assert await store.audit_log(shard="demo") == (refused, ok)
    assert await store.audit_log(limit=1) == (other,)
    assert await store.audit_log(before=other.id) == (refused, ok)
    assert await store.audit_log(shard="demo", before=refused.id) == (ok,)
    assert await store.audit_log(shard="nothing") == ()


async def test_a_closed_store_ends_its_watches(store: ConfigStore) -> None:
    changes = store.watch(0)
    waiting = asyncio.create_task(anext(changes, None))
    await put(store, "demo", 1, None)
    assert (await asyncio.wait_for(waiting, WATCH_TIMEOUT)) is not None
    pending = asyncio.create_task(anext(changes, None))
    await store.close()
    assert await asyncio.wait_for(pending, WATCH_TIMEOUT) is None


async def test_a_watch_replays_a_long_backlog_in_order(store: ConfigStore) -> None:
    written: list[Version] = []
    heads: dict[str, int] = {}
    for n in range(1, 301):  # more than one read's worth for a backend that reads in batches
        shard = f"s{n % 3}"
        written.append(await put(store, shard, n, heads.get(shard)))
        heads[shard] = written[-1].number
    changes = store.watch(0)
    try:
        assert [(await next_of(changes)).meta for _ in written] == written
    finally:
        await changes.aclose()


async def test_a_write_whose_caller_went_away_still_reaches_watches(store: ConfigStore) -> None:
    changes = store.watch(0)
    waiting = asyncio.create_task(next_of(changes))
    try:
        writing = asyncio.create_task(put(store, "demo", 1, None))
        await asyncio.sleep(0)  # the write is handed to the backend ...
        writing.cancel()  # ... and its caller gives up
        got = await waiting
        assert got.meta.number == 1 and got.text == shard_text(1)
    finally:
        waiting.cancel()
        await changes.aclose()


async def test_put_many_stores_every_write_or_none(store: ConfigStore) -> None:
    a1 = await put(store, "a", 1, None)
    b1 = await put(store, "b", 1, None)
    writes = [Write("a", shard_text(2), a1.number, API_OWNER), Write("b", shard_text(2), b1.number, API_OWNER),
              Write("c", shard_text(2), None, API_OWNER)]
    done = await store.put_many(writes, author="bob", message="fleet edit", source="api")
    assert [(v.shard, v.number, v.author, v.message) for v in done] == [
        ("a", 2, "bob", "fleet edit"), ("b", 2, "bob", "fleet edit"), ("c", 1, "bob", "fleet edit")]
    assert len({v.revision for v in done}) == 3
    # One stale base refuses the whole batch: nothing of it is stored.
    stale = [Write("a", shard_text(3), 2, API_OWNER), Write("b", shard_text(3), 1, API_OWNER)]
    with pytest.raises(Conflict) as refused:
        await store.put_many(stale, author="bob", message="stale", source="api")
    assert refused.value.shard == "b" and refused.value.current_version == 2
    assert [(await store.get(s)).meta.number for s in ("a", "b", "c")] == [2, 2, 1]  # type: ignore[union-attr]
    assert (await store.list()).revision == done[-1].revision


# --- records ---------------------------------------------------------------------


async def test_a_record_is_created_read_and_listed_by_kind(store: ConfigStore) -> None:
    assert await store.get_record("migration", "demo") is None
    r1 = await store.put_record("migration", "demo", '{"phase": "shadow"}', base_version=None)
    await store.put_record("migration", "alpha", "{}", base_version=None)
    await store.put_record("rollout", "r1", "[]", base_version=None)
    assert (r1.kind, r1.name, r1.version, r1.data) == ("migration", "demo", 1, '{"phase": "shadow"}')
    assert r1.at.utcoffset() == timedelta(0)
    assert await store.get_record("migration", "demo") == r1
    assert [r.name for r in await store.list_records("migration")] == ["alpha", "demo"]
    assert [r.name for r in await store.list_records("rollout")] == ["r1"]
    assert await store.list_records("artifact") == ()


async def test_a_record_write_is_compare_and_set_on_its_version(store: ConfigStore) -> None:
    r1 = await store.put_record("migration", "demo", "1", base_version=None)
    r2 = await store.put_record("migration", "demo", "2", base_version=r1.version)
    assert r2.version == 2 and r2.data == "2"
    for stale in (None, 1, 3):
        with pytest.raises(RecordConflict) as refused:
            await store.put_record("migration", "demo", "lost", base_version=stale)
        assert refused.value.current == r2
    assert await store.get_record("migration", "demo") == r2


async def test_of_two_writers_from_one_base_exactly_one_wins(store: ConfigStore) -> None:
    base = await store.put_record("rollout", "r", "0", base_version=None)
    results = await asyncio.gather(
        *(store.put_record("rollout", "r", str(i), base_version=base.version) for i in range(5)),
        return_exceptions=True,
    )
    assert sum(isinstance(r, RecordConflict) for r in results) == 4
    (winner,) = [r for r in results if not isinstance(r, BaseException)]
    assert await store.get_record("rollout", "r") == winner


async def test_a_record_delete_is_compare_and_set_and_frees_the_name(store: ConfigStore) -> None:
    r1 = await store.put_record("revocation", "node-1", "{}", base_version=None)
    with pytest.raises(RecordConflict):
        await store.delete_record("revocation", "node-1", base_version=r1.version + 1)
    await store.delete_record("revocation", "node-1", base_version=r1.version)
    assert await store.get_record("revocation", "node-1") is None
    with pytest.raises(RecordConflict) as refused:
        await store.delete_record("revocation", "node-1", base_version=r1.version)
    assert refused.value.current is None
    again = await store.put_record("revocation", "node-1", "{}", base_version=None)
    assert again.version == 1


@pytest.mark.parametrize(("kind", "name"), [("", "x"), ("a/b", "x"), ("k", "x\n"), ("k", "x/y"), ("k", "é")])
async def test_a_record_key_is_a_plain_word(store: ConfigStore, kind: str, name: str) -> None:
    with pytest.raises(ValueError, match="must match"):
        await store.put_record(kind, name, "{}", base_version=None)


async def test_records_do_not_touch_shards_or_their_watch(store: ConfigStore) -> None:
    v1 = await put(store, "demo", 1, None)
    await store.put_record("migration", "demo", "{}", base_version=None)
    listing = await store.list()
    assert listing.revision == v1.revision and [s.meta.shard for s in listing.shards] == ["demo"]
    changes = store.watch(v1.revision)
    v2 = await put(store, "demo", 2, v1.number)
    assert (await next_of(changes)).meta == v2
