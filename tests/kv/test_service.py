"""The KV calls (``dals/kv/service.py``) on a real SQLite engine, without a network:
idempotent writes, tokens, guardrails (each refused with its limit's name, nothing
stored), byte-bounded pages, values split across pages, adaptive pages near a
deadline (a fake clock), resumable scans."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from dals.kv.config import KvConfig
from dals.kv.engines import Engine
from dals.kv.engines.sqlite import SqliteEngine
from dals.kv.errors import Code, KvError
from dals.kv.service import WRITE_TIME_BYTES, KvService
from dals.kv.tokens import new_token
from dals.kv.v1 import kv_pb2

NOW = 1_700_000_000_000_000  # µs


class FakeClock:
    """Monotonic seconds that move only when the test (or an engine read) says so."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def svc(tmp_path: Path) -> AsyncIterator[KvService]:
    service = await make_service(tmp_path)
    try:
        yield service
    finally:
        await service.close()


@pytest.fixture
def on_each_engine(engine: Engine) -> KvService:
    """The service on every engine of ``conftest.ENGINES`` (the fixture closes the engine)."""
    config = KvConfig.model_validate({
        "engines": {"local": {"kind": "sqlite", "path": "unused"}}, "namespaces": {"ns": {"engine": "local"}},
    })  # fmt: skip
    return KvService(config, {"local": engine}, now_us=lambda: NOW, monotonic=FakeClock())


async def make_service(tmp_path: Path, clock: FakeClock | None = None, **limits: int) -> KvService:
    config = KvConfig.model_validate({
        "engines": {"local": {"kind": "sqlite", "path": str(tmp_path / "kv.sqlite3"), "synchronous": "NORMAL"}},
        "namespaces": {"ns": {"engine": "local"}},
        "limits": limits,
    })  # fmt: skip
    engine = await SqliteEngine.open(tmp_path / "kv.sqlite3", "NORMAL")
    return KvService(config, {"local": engine}, now_us=lambda: NOW, monotonic=clock or FakeClock())


def token(t: int = NOW, n: int = 1, write_time: int = 0) -> kv_pb2.IdempotencyToken:
    return new_token(t, write_time, n.to_bytes(16, "big"))


def put_req(items: dict[bytes, bytes], tok: kv_pb2.IdempotencyToken | None = None, rid: str = "r",
            ns: str = "ns") -> kv_pb2.PutItemsRequest:  # fmt: skip
    return kv_pb2.PutItemsRequest(namespace=ns, id=rid, items=[kv_pb2.Item(key=k, value=v) for k, v in items.items()],
                                  idempotency_token=tok or token())  # fmt: skip


async def put(svc: KvService, items: dict[bytes, bytes], tok: kv_pb2.IdempotencyToken | None = None,
              rid: str = "r") -> int:  # fmt: skip
    req = put_req(items, tok, rid)
    return (await svc.put_items(req, req.ByteSize())).applied


async def get_page(svc: KvService, req: kv_pb2.GetItemsRequest, deadline: float | None = None) -> kv_pb2.GetItemsResponse:
    return kv_pb2.GetItemsResponse.FromString(await svc.get_items(req, req.ByteSize(), deadline))


async def read_all(svc: KvService, rid: str = "r", page_size: int = 0,
                   **fields: object) -> tuple[dict[bytes, bytes], list[kv_pb2.GetItemsResponse]]:  # fmt: skip
    req = kv_pb2.GetItemsRequest(namespace="ns", id=rid, page_size_bytes=page_size, **fields)  # type: ignore[arg-type]
    pages, values, parts = [], {}, b""
    while True:
        page = await get_page(svc, req)
        pages.append(page)
        for item in page.items:
            if item.HasField("part"):
                assert item.part.offset == len(parts)
                parts += item.value
                if len(parts) == item.part.total_size:
                    values[item.key], parts = parts, b""
            else:
                assert item.key not in values, "an item seen twice"
                values[item.key] = item.value
        if not page.next_page_token:
            return values, pages
        req.page_token = page.next_page_token


async def refused(call: object, code: Code, *words: str) -> str:
    with pytest.raises(KvError) as caught:
        await call  # type: ignore[misc]
    assert caught.value.code is code, caught.value.message
    for word in words:
        assert word in caught.value.message
    return caught.value.message


async def test_a_write_sent_twice_applies_once_and_an_older_one_never_wins(svc: KvService) -> None:
    assert await put(svc, {b"k": b"new"}, token(NOW, 2)) == 1
    assert await put(svc, {b"k": b"new"}, token(NOW, 2)) == 0  # the retry
    assert await put(svc, {b"k": b"old"}, token(NOW - 5_000_000, 9)) == 0  # older, late
    values, _ = await read_all(svc)
    assert values == {b"k": b"new"}
    # A backfill's copy carries the original write time: older than the live write, it loses.
    assert await put(svc, {b"k": b"copy"}, token(NOW, 3, write_time=NOW - 1)) == 0
    assert await put(svc, {b"fresh": b"copy"}, token(NOW, 3, write_time=NOW - 10**12)) == 1


async def test_reads_carry_write_times_when_asked(svc: KvService) -> None:
    await put(svc, {b"k": b"v"}, token(NOW - 7, 5))
    [item] = (await get_page(svc, kv_pb2.GetItemsRequest(namespace="ns", id="r", with_write_times=True))).items
    assert (item.write_time_us, item.writer_id) == (NOW - 7, (5).to_bytes(16, "big"))
    [plain] = (await get_page(svc, kv_pb2.GetItemsRequest(namespace="ns", id="r"))).items
    assert (plain.write_time_us, plain.writer_id) == (0, b"")


async def test_tokens_are_checked(svc: KvService) -> None:
    def req(tok: kv_pb2.IdempotencyToken | None) -> kv_pb2.PutItemsRequest:
        r = put_req({b"k": b"v"})
        r.ClearField("idempotency_token")
        if tok is not None:
            r.idempotency_token.CopyFrom(tok)
        return r

    cases = [
        (None, "idempotency_token is missing"),
        (kv_pb2.IdempotencyToken(generation_time_us=NOW, id=b"short"), "16 random bytes"),
        (kv_pb2.IdempotencyToken(generation_time_us=0, id=bytes(16)), "generation_time_us"),
        (token(NOW - 25 * 3600 * 10**6), "limits.token_max_age_s"),
        (token(NOW + 120 * 10**6), "limits.token_max_ahead_s"),
        (token(NOW, write_time=NOW + 3600 * 10**6), "write_time_us"),
    ]
    for tok, words in cases:
        r = req(tok)
        await refused(svc.put_items(r, r.ByteSize()), Code.INVALID_ARGUMENT, words)
    assert (await read_all(svc))[0] == {}  # nothing stored


async def test_hostile_calls_are_refused_naming_the_limit_and_store_nothing(svc: KvService) -> None:
    many = {str(i).encode(): b"v" for i in range(10_000)}
    big = put_req({b"k": b"x" * (1024 * 1024 + 1)})
    calls = [
        (svc.put_items(put_req(many), 1), Code.INVALID_ARGUMENT, "limits.max_items_per_call"),
        (svc.put_items(big, big.ByteSize()), Code.INVALID_ARGUMENT, "limits.max_value_bytes"),
        (svc.put_items(put_req({b"k" * 2000: b"v"}), 10), Code.INVALID_ARGUMENT, "limits.max_key_bytes"),
        (svc.put_items(put_req({b"": b"v"}), 10), Code.INVALID_ARGUMENT, "empty"),
        (svc.put_items(put_req({b"k": b"v"}), 5 * 1024 * 1024), Code.INVALID_ARGUMENT, "limits.max_request_bytes"),
        (svc.put_items(put_req({b"k": b"v"}, ns="nope"), 10), Code.FAILED_PRECONDITION, "'nope' is not declared", "ns"),
        (svc.put_items(put_req({b"k": b"v"}, rid=""), 10), Code.INVALID_ARGUMENT, "id is missing"),
        (svc.put_items(put_req({b"k": b"v"}, rid="a\x00b"), 10), Code.INVALID_ARGUMENT, "NUL"),
    ]
    for call, code, *words in calls:
        await refused(call, code, *words)
    keys = kv_pb2.GetItemsRequest(namespace="ns", id="r")
    keys.predicate.keys.keys.extend(many)
    await refused(svc.get_items(keys, 1), Code.INVALID_ARGUMENT, "limits.max_items_per_call")
    pages = kv_pb2.GetItemsRequest(namespace="ns", id="r", page_size_bytes=64 * 1024 * 1024)
    await refused(svc.get_items(pages, 1), Code.INVALID_ARGUMENT, "limits.max_page_bytes")
    tiny = kv_pb2.GetItemsRequest(namespace="ns", id="r", page_size_bytes=10)
    await refused(svc.get_items(tiny, 1), Code.INVALID_ARGUMENT, "limits.min_page_bytes")
    forged = kv_pb2.GetItemsRequest(namespace="ns", id="r", page_token=b"kv1.garbage")
    await refused(svc.get_items(forged, 1), Code.INVALID_ARGUMENT, "page_token")
    empty_range = kv_pb2.DeleteItemsRequest(namespace="ns", id="r", idempotency_token=token())
    empty_range.predicate.range.start, empty_range.predicate.range.end = b"b", b"a"
    await refused(svc.delete_items(empty_range, 1), Code.INVALID_ARGUMENT, "range is empty")
    assert (await read_all(svc))[0] == {}
    assert await svc.engines["local"].scan("ns", None, 10) == []


async def test_a_token_from_another_read_is_refused(svc: KvService) -> None:
    await put(svc, {str(i).encode(): b"v" * 100 for i in range(100)})
    first = await get_page(svc, kv_pb2.GetItemsRequest(namespace="ns", id="r", page_size_bytes=4096))
    assert first.next_page_token
    other = kv_pb2.GetItemsRequest(namespace="ns", id="other", page_size_bytes=4096, page_token=first.next_page_token)
    await refused(svc.get_items(other, 1), Code.INVALID_ARGUMENT, "another read")
    changed = kv_pb2.GetItemsRequest(namespace="ns", id="r", with_write_times=True, page_token=first.next_page_token)
    await refused(svc.get_items(changed, 1), Code.INVALID_ARGUMENT, "other options")


async def test_ten_thousand_items_page_by_page_each_once_each_page_in_budget(on_each_engine: KvService) -> None:
    svc = on_each_engine
    items = {f"key-{i:05d}".encode(): bytes([i % 251]) * (i % 300) for i in range(10_000)}
    for start in range(0, 10_000, 1000):
        chunk = dict(list(items.items())[start:start + 1000])
        await put(svc, chunk, token(NOW, start + 1))
    for budget, with_times in ((4096, False), (65_536, True)):
        values, pages = await read_all(svc, page_size=budget, with_write_times=with_times)
        assert values == items
        extra = WRITE_TIME_BYTES if with_times else 0
        assert all(sum(len(i.key) + len(i.value) + extra for i in p.items) <= budget for p in pages)
        assert len(pages) > 10_000 * 160 // budget


async def test_a_value_larger_than_a_page_comes_in_parts(tmp_path: Path) -> None:
    svc = await make_service(tmp_path, max_value_bytes=64 * 1024)
    try:
        value = bytes(range(256)) * 200  # 51,200 bytes
        await put(svc, {b"a": b"small", b"big": value, b"c": b"after"})
        values, pages = await read_all(svc, page_size=8192)
        assert values == {b"a": b"small", b"big": value, b"c": b"after"}
        assert all(sum(len(i.key) + len(i.value) for i in p.items) <= 8192 for p in pages)
        assert sum(1 for p in pages for i in p.items if i.HasField("part")) >= 7
    finally:
        await svc.close()


async def test_a_value_replaced_between_two_pages_is_not_stitched(tmp_path: Path) -> None:
    svc = await make_service(tmp_path, max_value_bytes=64 * 1024)
    try:
        await put(svc, {b"big": b"a" * 50_000}, token(NOW - 10))
        req = kv_pb2.GetItemsRequest(namespace="ns", id="r", page_size_bytes=8192)
        first = await get_page(svc, req)
        await put(svc, {b"big": b"b" * 50_000}, token(NOW))
        req.page_token = first.next_page_token
        await refused(svc.get_items(req, 1), Code.ABORTED, "changed while it was read")
    finally:
        await svc.close()


async def test_chunks_are_staged_then_committed_under_one_token(tmp_path: Path) -> None:
    svc = await make_service(tmp_path, max_value_bytes=4096)
    try:
        value = bytes(range(256)) * 50  # 12,800 bytes: 4 chunks of 4,096
        tok = token()
        parts = [value[i:i + 4096] for i in range(0, len(value), 4096)]

        def chunk(i: int) -> kv_pb2.Item:
            return kv_pb2.Item(key=b"big", value=parts[i], chunk=kv_pb2.Chunk(index=i, count=4, total_size=len(value)))

        commit = kv_pb2.Item(key=b"big", chunk=kv_pb2.Chunk(count=4, total_size=len(value), commit=True))
        for items in ([chunk(0), chunk(1)], [chunk(3)]):
            req = kv_pb2.PutItemsRequest(namespace="ns", id="r", items=items, idempotency_token=tok)
            assert (await svc.put_items(req, req.ByteSize())).applied == 0
        early = kv_pb2.PutItemsRequest(namespace="ns", id="r", items=[commit], idempotency_token=tok)
        await refused(svc.put_items(early, 1), Code.FAILED_PRECONDITION, "not all 4 chunks", "applies when")
        assert (await read_all(svc))[0] == {}
        last = kv_pb2.PutItemsRequest(namespace="ns", id="r", items=[chunk(2), commit], idempotency_token=tok)
        assert (await svc.put_items(last, last.ByteSize())).applied == 1
        assert (await svc.put_items(last, last.ByteSize())).applied == 0  # the retry
        assert (await read_all(svc))[0] == {b"big": value}
        assert (await read_all(svc, page_size=5000))[0] == {b"big": value}
    finally:
        await svc.close()


async def test_a_page_stops_early_when_the_call_nears_its_deadline(tmp_path: Path) -> None:
    clock = FakeClock()
    svc = await make_service(tmp_path, clock)
    try:
        await put(svc, {f"{i:04d}".encode(): b"v" for i in range(1000)})
        engine = svc.engines["local"]
        read = engine.read_items

        async def slow_read(*args: object) -> object:
            clock.now += 0.1  # every engine read takes 100 ms of the call's time
            return await read(*args)  # type: ignore[arg-type]

        engine.read_items = slow_read  # type: ignore[method-assign]
        req = kv_pb2.GetItemsRequest(namespace="ns", id="r")
        first = await get_page(svc, req, deadline=clock.now + 0.25)
        assert 0 < len(first.items) < 1000 and first.next_page_token  # two reads, then it stopped
        req.page_token = first.next_page_token
        rest = await get_page(svc, req, deadline=None)
        assert len(first.items) + len(rest.items) == 1000 and not rest.next_page_token
    finally:
        await svc.close()


async def test_deletes_and_mutations(svc: KvService) -> None:
    await put(svc, {b"a": b"1", b"b": b"2", b"c": b"3", b"d": b"4"}, token(NOW - 100))
    req = kv_pb2.DeleteItemsRequest(namespace="ns", id="r", idempotency_token=token(NOW - 90))
    req.predicate.keys.keys.append(b"a")
    assert (await svc.delete_items(req, 1)).applied == 1
    mutate = kv_pb2.MutateItemsRequest(namespace="ns", id="r", idempotency_token=token(NOW - 80))
    mutate.mutations.add().delete.range.start = b"c"
    mutate.mutations.add(put=kv_pb2.Item(key=b"d", value=b"new"))
    mutate.mutations.add(put=kv_pb2.Item(key=b"e", value=b"5"))
    assert (await svc.mutate_items(mutate, 1)).applied == 4  # c, d removed; d, e set
    assert (await read_all(svc))[0] == {b"b": b"2", b"d": b"new", b"e": b"5"}
    everything = kv_pb2.DeleteItemsRequest(namespace="ns", id="r", idempotency_token=token(NOW - 70))
    assert (await svc.delete_items(everything, 1)).applied == 3
    assert (await read_all(svc))[0] == {}
    assert await put(svc, {b"late": b"x"}, token(NOW - 75)) == 0  # older than the record delete


async def test_a_scan_resumed_from_its_cursor_sees_each_record_once(on_each_engine: KvService) -> None:
    svc = on_each_engine
    for i in range(300):
        await put(svc, {b"a": b"x" * 50, b"b": b"y" * 50}, token(NOW, i + 1), rid=f"rec-{i:03d}")
    seen: list[tuple[str, bytes]] = []
    req = kv_pb2.ScanItemsRequest(namespace="ns", page_size_bytes=4096)
    for _ in range(3):  # three pages, then "interrupted": a new request from the cursor
        page = kv_pb2.ScanItemsResponse.FromString((await svc.scan_items(req, 1)).SerializeToString())
        seen += [(r.id, i.key) for r in page.records for i in r.items]
        req.cursor = page.next_cursor
    resumed = kv_pb2.ScanItemsRequest(namespace="ns", page_size_bytes=4096, cursor=req.cursor)
    while True:
        page = await svc.scan_items(resumed, 1)
        seen += [(r.id, i.key) for r in page.records for i in r.items]
        if not page.next_cursor:
            break
        resumed.cursor = page.next_cursor
    assert seen == [(f"rec-{i:03d}", k) for i in range(300) for k in (b"a", b"b")]
