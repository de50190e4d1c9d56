"""The migration runner (``dgw/migrate/``) between two real KV DAL processes, SQLite →
PostgreSQL: the backfill copies every item with its original version, a live write
during the copy keeps the newest value, a backfill killed with -9 resumes from its
checkpoint, and verify names planted differences (a missing item, a changed value, an
extra record) and fixes them."""

from __future__ import annotations

import asyncio
import json
import sys

import asyncpg
import pytest

from dals.kv.client import KvClient
from dals.kv.tokens import new_token
from dgw.migrate.backfill import BackfillOptions, run_backfill
from dgw.migrate.state import MemoryState
from dgw.migrate.verify import CHANGED, EXTRA, MISSING, VerifyOptions, run_verify
from testkit.procs import Child
from testkit.wait import eventually
from tests.kv.support import POSTGRES_DSN
from tests.migrate.conftest import Pair

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

Snapshot = dict[tuple[str, str, bytes], tuple[bytes, int, bytes]]


async def snapshot(client: KvClient, namespaces: tuple[str, ...] = ("ns", "other")) -> Snapshot:
    out: Snapshot = {}
    for ns in namespaces:
        async for batch in client.scan(ns, with_write_times=True):
            for rid, item in batch.items:
                out[(ns, rid, item.key)] = (item.value, item.write_time_us, item.writer_id)
    return out


async def seed(client: KvClient, records: int, items: int = 10, size: int = 1024) -> None:
    for r in range(records):
        await client.put(
            "ns",
            f"user-{r:05}",
            {f"k{i:02}".encode(): bytes([r % 251]) * size for i in range(items)},
        )


async def shadowed(
    source: KvClient, target: KvClient, ns: str, rid: str, items: dict[bytes, bytes]
) -> None:
    """A live write as the gateway's shadow makes it: one token, to the source, then the target."""
    token = new_token()
    await source.put(ns, rid, items, token=token)
    await target.put(ns, rid, items, token=token)


async def run(argv: list[str]) -> tuple[int, str, str]:
    """Run a child to its end (bounded): exit code, stdout, stderr."""
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 120)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    return proc.returncode or 0, out.decode(), err.decode()


async def test_backfill_copies_every_item_with_its_version_and_a_second_run_applies_nothing(
    pair: Pair,
) -> None:
    async with (
        KvClient.connect(pair.source.target) as src,
        KvClient.connect(pair.target.target) as dst,
    ):
        await seed(src, 60)
        await src.put("other", "o-1", {b"a": b"1", b"b": b"2"})
        await src.put("ns", "big", {b"value": bytes(range(256)) * (3 * 4096)})  # 3 MiB: in chunks
        await src.put("ns", "user-00001", {b"gone": b"x"})
        await src.delete("ns", "user-00001", keys=[b"gone"])  # a tombstone: nothing to copy
        state = MemoryState()
        first = await run_backfill(pair.source.target, pair.target.target, state,
                                   BackfillOptions(page_size_bytes=64 * 1024, checkpoint_s=0.05), progress=False)  # fmt: skip
        assert first.done and first.items == 60 * 10 + 2 + 1 and first.skipped == 0
        assert await snapshot(dst) == await snapshot(src)
        saved = state.data["backfill"]
        assert saved["done"] and saved["lease"] is None and saved["totals"]["items"] == first.items
        assert all(ns["done"] for ns in saved["namespaces"].values())
        again = await run_backfill(
            pair.source.target, pair.target.target, MemoryState(), progress=False
        )
        assert again.done and again.items == first.items and again.skipped == again.items


async def test_live_writes_during_the_backfill_keep_the_newest_value(pair: Pair) -> None:
    async with (
        KvClient.connect(pair.source.target) as src,
        KvClient.connect(pair.target.target) as dst,
    ):
        await seed(src, 100)
        state = MemoryState({"throttle": {"items_per_s": 1500, "bytes_per_s": None}})
        copying = asyncio.create_task(run_backfill(
            pair.source.target, pair.target.target, state,
            BackfillOptions(page_size_bytes=16 * 1024, checkpoint_s=0.05), progress=False))  # fmt: skip
        written = 0
        while not copying.done() or written < 20:
            r = written % 100
            await shadowed(
                src,
                dst,
                "ns",
                f"user-{r:05}",
                {b"k00": f"live {written}".encode(), b"new": b"live"},
            )
            if written % 7 == 0:
                token = new_token()
                await src.delete("ns", f"user-{r:05}", keys=[b"k01"], token=token)
                await dst.delete("ns", f"user-{r:05}", keys=[b"k01"], token=token)
            written += 1
        result = await copying
        assert result.done and result.skipped > 0  # copies older than the live writes did not apply
        source, target = await snapshot(src), await snapshot(dst)
        assert target == source
        assert target[("ns", "user-00000", b"k00")][0].startswith(b"live")


async def test_a_backfill_killed_with_minus_9_resumes_from_its_checkpoint(pair: Pair) -> None:
    state_file = pair.tmp / "migration.json"

    def backfill(*extra: str) -> list[str]:
        return [sys.executable, "-m", "dgw.migrate.backfill", "--source", pair.source.target, "--target",
                pair.target.target, "--state", str(state_file), "--checkpoint-s", "0.1", "--page-bytes", "16384",
                *extra]  # fmt: skip

    def copied() -> int:
        try:
            return int(json.loads(state_file.read_text())["backfill"]["totals"]["items"])
        except (OSError, ValueError, KeyError, TypeError):
            return 0

    async with (
        KvClient.connect(pair.source.target) as src,
        KvClient.connect(pair.target.target) as dst,
    ):
        await seed(src, 150)
        first = Child(backfill("--items-per-s", "400"), pair.tmp / "backfill-1.log")
        try:
            await eventually(
                lambda: first.check("the backfill") or copied() >= 200, 30, what="a checkpoint"
            )
            await shadowed(src, dst, "ns", "user-00140", {b"k00": b"newer than the copy"})
            first.kill()
        finally:
            first.stop()
        at_kill = json.loads(state_file.read_text())["backfill"]
        assert not at_kill["done"] and at_kill["lease"] is not None
        # The dead runner's lease stands: a second one is refused, unless it takes over.
        code, _, err = await run(backfill())
        assert code == 1 and "lease" in err and "--take-over" in err
        code, out, err = await run(backfill("--take-over", "--items-per-s", "1000000"))
        assert code == 0, err
        summary = json.loads(out)
        assert (
            summary["done"] and summary["items"] < 1500
        )  # resumed from the cursor, not from the start
        end = json.loads(state_file.read_text())["backfill"]
        assert end["done"] and end["totals"]["items"] >= 1500
        source, target = await snapshot(src), await snapshot(dst)
        assert target == source and len(target) == 1500
        assert target[("ns", "user-00140", b"k00")][0] == b"newer than the copy"


async def test_a_stopped_backfill_gives_its_lease_up_at_once_even_while_throttled(pair: Pair) -> None:
    # What Ctrl-C of `dgw migrate SHARD backfill` does: at 2 items/s the first page's
    # turn is seconds away; a stop meanwhile ends the run at once, imports nothing more,
    # and gives the lease up, so the next run needs no --take-over.
    async with KvClient.connect(pair.source.target) as src:
        await seed(src, 20)
    state = MemoryState({"throttle": {"items_per_s": 2}})
    stop = asyncio.Event()
    options = BackfillOptions(page_size_bytes=16 * 1024, checkpoint_s=0.05)
    first = asyncio.create_task(
        run_backfill(pair.source.target, pair.target.target, state, options, progress=False, stop=stop))
    await eventually(lambda: first.done() or (state.data.get("backfill") or {}).get("lease") is not None, 30,
                     what="the runner's lease")  # fmt: skip
    stop.set()
    stopped = await asyncio.wait_for(first, 5)  # not the page's turn, seconds later
    saved = state.data["backfill"]
    assert not stopped.done and stopped.items == 0 and not saved["done"] and saved["lease"] is None
    state.update(throttle={})
    again = await run_backfill(pair.source.target, pair.target.target, state, options, progress=False)
    assert again.done and again.items == 200


async def test_verify_names_a_missing_item_a_changed_value_and_an_extra_record_and_fix_repairs_them(
    pair: Pair,
) -> None:
    async with KvClient.connect(pair.source.target) as src:
        await seed(src, 300, items=4, size=64)
    await run_backfill(pair.source.target, pair.target.target, MemoryState(), progress=False)
    options = VerifyOptions(parts=8, entries_limit=50, recheck_s=0.05)
    clean = await run_verify(pair.source.target, pair.target.target, None, options, progress=False)
    assert clean.differences == 0 and clean.namespaces["ns"]["source_items"] == 1200
    conn = await asyncpg.connect(POSTGRES_DSN)
    s = pair.schema
    try:
        await conn.execute(
            f"DELETE FROM {s}.items WHERE namespace = 'ns' AND id = 'user-00017' AND key = 'k02'"
        )
        await conn.execute(f"UPDATE {s}.items SET value = 'damaged' WHERE namespace = 'ns' AND id = 'user-00230' "
                           "AND key = 'k01'")  # fmt: skip
        await conn.execute(
            f"INSERT INTO {s}.items VALUES ('ns', 'stray', 'k', 'x', 1, 0, 5, $1)", bytes(16)
        )
    finally:
        await conn.close()
    state = MemoryState()
    report = await run_verify(
        pair.source.target, pair.target.target, state, options, progress=False
    )
    found = {(d.record_id, d.key, d.kind) for d in report.found}
    assert found == {
        ("user-00017", b"k02", MISSING),
        ("user-00230", b"k01", CHANGED),
        ("stray", b"k", EXTRA),
    }
    assert report.differences == 3 and report.namespaces["ns"]["differences"] == 3
    assert any("ns/stray/k: only in the target" in line for line in report.lines())
    assert state.data["verify"]["differences"] == 3
    fixed = await run_verify(pair.source.target, pair.target.target, state, VerifyOptions(fix=True, recheck_s=0.05),
                             progress=False)  # fmt: skip
    assert fixed.fixed == 3
    again = await run_verify(pair.source.target, pair.target.target, state, options, progress=False)
    assert again.differences == 0 and state.data["verify"]["differences"] == 0


async def test_a_throttle_acts_while_the_backfill_runs_and_a_rising_p99_backs_it_off(
    pair: Pair,
) -> None:
    async with KvClient.connect(pair.source.target) as src:
        await seed(src, 100, items=10, size=100)
    state = MemoryState({"throttle": {"items_per_s": 200, "bytes_per_s": None}})
    p99s = iter([10.0, 10.5, 30.0])  # ms: the baseline, within it, then over it

    async def live_p99() -> float | None:
        return next(p99s, 30.0)

    options = BackfillOptions(page_size_bytes=4096, checkpoint_s=0.05)
    copying = asyncio.create_task(
        run_backfill(
            pair.source.target,
            pair.target.target,
            state,
            options,
            live_p99=live_p99,
            progress=False,
        )
    )

    def rate() -> dict[str, object]:
        return dict(state.data.get("backfill", {}).get("rate") or {})

    try:
        await eventually(lambda: rate().get("backoff", 1) < 1, 10, what="the back-off")
        assert rate()["limit_items_per_s"] < 200
        state.update(
            throttle={"items_per_s": 1_000_000, "bytes_per_s": None}
        )  # the operator, meanwhile
        result = await asyncio.wait_for(copying, 60)
    finally:
        copying.cancel()
    assert result.done and result.items == 1000


async def test_live_writes_during_verify_cause_no_false_differences(pair: Pair) -> None:
    async with (
        KvClient.connect(pair.source.target) as src,
        KvClient.connect(pair.target.target) as dst,
    ):
        await seed(src, 200, items=5, size=64)
        await run_backfill(pair.source.target, pair.target.target, MemoryState(), progress=False)
        options = VerifyOptions(parts=8, entries_limit=50, recheck_s=0.2)
        verifying = asyncio.create_task(run_verify(pair.source.target, pair.target.target, None, options,
                                                   progress=False))  # fmt: skip
        written = 0
        while not verifying.done() or written < 10:
            # The shadow's copy lands on the target a moment after the source's write.
            token = new_token()
            rid = f"user-{(written * 37) % 200:05}"
            await src.put("ns", rid, {b"k00": f"live {written}".encode()}, token=token)
            await asyncio.sleep(0.01)
            await dst.put("ns", rid, {b"k00": f"live {written}".encode()}, token=token)
            written += 1
        report = await verifying
        assert report.differences == 0, report.lines()
        assert written >= 10
