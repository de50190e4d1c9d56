"""The KV DAL as a process serves it (``dals.kv.server.serve``, in this test's loop), on
each engine: every call over gRPC (through ``dals.kv.client``) and over HTTP/JSON, a
5 MiB value in chunks with a reader racing the writer, and hostile requests answered
with one clear error."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import asyncpg
import grpc
import pytest

from dals.kv.client import KvCallError, KvClient
from dals.kv.server import serve
from dals.kv.tokens import new_token
from dals.kv.v1 import kv_pb2
from testkit.ports import free_port, port_open
from testkit.wait import eventually
from tests.kv.support import POSTGRES_DSN, drop_schema, engine_config, every_call, require_postgres

MIB = 1024 * 1024


@dataclass
class Dal:
    grpc_port: int
    http_port: int
    client: KvClient

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.http_port}{path}"


def kv_env(engine: dict[str, object], grpc_port: int, http_port: int, dal: str = "kv") -> dict[str, str]:
    config = {"engines": {"main": engine}, "namespaces": {"ns": {"engine": "main"}, "other": {"engine": "main"}}}
    return {"KV_CONFIG": json.dumps(config), "DGW_DAL_NAME": dal,
            "DGW_LISTENER_RPC_GRPC_PORT": str(grpc_port), "DGW_LISTENER_API_PORT": str(http_port)}  # fmt: skip


@contextlib.asynccontextmanager
async def running(env: dict[str, str]) -> AsyncIterator[None]:
    stop = asyncio.Event()
    task = asyncio.create_task(serve(env, stop))
    ports = [int(v) for k, v in env.items() if k.startswith("DGW_LISTENER_")]
    try:
        await eventually(lambda: task.done() or all(port_open(p) for p in ports), 20, what="the DAL's ports")
        if task.done():
            task.result()
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def dal(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Dal]:
    schema = f"kv_api_{secrets.token_hex(4)}"
    engine = await engine_config(request.param, tmp_path, schema)
    grpc_port, http_port = free_port(), free_port()
    try:
        async with running(kv_env(engine, grpc_port, http_port)):
            client = KvClient.connect(f"127.0.0.1:{grpc_port}")
            try:
                yield Dal(grpc_port, http_port, client)
            finally:
                await client.close()
    finally:
        if request.param == "postgres":
            await drop_schema(schema)


async def test_every_call_over_grpc(dal: Dal) -> None:
    await every_call(dal.client, "ns", "direct")
    health = dal.client.channel.unary_unary("/grpc.health.v1.Health/Check")
    assert await health(b"", timeout=5) == b"\x08\x01"


async def test_every_call_over_http(dal: Dal) -> None:
    def b64(s: bytes) -> str:
        return base64.b64encode(s).decode()

    now = new_token().generation_time_us

    def token(later: int = 0) -> dict[str, str]:
        return {"generationTimeUs": str(now + later), "id": b64(secrets.token_bytes(16))}

    async with aiohttp.ClientSession() as http:
        async def call(method: str, path: str, body: object = None) -> tuple[int, dict]:
            async with http.request(method, dal.url(path), json=body) as r:
                return r.status, await r.json()

        put = {"items": [{"key": b64(b"a"), "value": b64(b"1")}, {"key": b64(b"b"), "value": b64(b"2")}],
               "idempotencyToken": token()}  # fmt: skip
        assert await call("PUT", "/v1/ns/rec%20one", put) == (200, {"applied": 2})
        assert await call("PUT", "/v1/ns/rec%20one", put) == (200, {})  # the retry: applied 0
        status, body = await call("GET", "/v1/ns/rec%20one")
        assert status == 200 and [(base64.b64decode(i["key"]), base64.b64decode(i["value"])) for i in body["items"]] == [
            (b"a", b"1"), (b"b", b"2")]
        status, body = await call("GET", f"/v1/ns/rec%20one?key={b64(b'b')}&with_write_times=1")
        assert [base64.b64decode(i["key"]) for i in body["items"]] == [b"b"] and body["items"][0]["writeTimeUs"]
        mutate = {"mutations": [{"delete": {"keys": {"keys": [b64(b"a")]}}}, {"put": {"key": b64(b"c"), "value": b64(b"3")}}],
                  "idempotencyToken": token(1)}  # fmt: skip
        assert await call("POST", "/v1/ns/rec%20one/mutate", mutate) == (200, {"applied": 2})
        status, body = await call("GET", "/v1/ns")
        assert status == 200 and [r["id"] for r in body["records"]] == ["rec one"]
        delete = {"idempotencyToken": token(2)}
        assert await call("DELETE", "/v1/ns/rec%20one", delete) == (200, {"applied": 2})
        assert (await call("GET", "/v1/ns/rec%20one"))[1] == {}
        status, body = await call("GET", "/v1/%FF%FE/x")
        assert (status, body["error"]["code"]) == (400, "INVALID_ARGUMENT") and "UTF-8" in body["error"]["message"]
        status, body = await call("PUT", "/v1/nope/x", put)
        assert (status, body["error"]["code"]) == (412, "FAILED_PRECONDITION")
        status, body = await call("PUT", "/v1/ns/x", {"items": put["items"]})
        assert status == 400 and "idempotency_token is missing" in body["error"]["message"]
        async with http.get(dal.url("/health")) as r:
            assert r.status == 200 and (await r.json())["status"] == "ok"
    calls = {k: v for k, v in (await stats(dal)).items() if k.startswith("http.PutItems")}
    assert calls == {"http.PutItems": 4, "http.PutItems.OK": 2, "http.PutItems.FAILED_PRECONDITION": 1,
                     "http.PutItems.INVALID_ARGUMENT": 1}  # fmt: skip


@pytest.mark.slow
async def test_a_five_mib_value_round_trips_in_chunks_and_a_racing_reader_sees_old_or_new(dal: Dal) -> None:
    old, new = b"o" * (5 * MIB), bytes(range(256)) * (5 * MIB // 256)
    c = dal.client
    assert await c.put("ns", "big", {b"v": old}) == 1
    [item] = await c.get("ns", "big")
    assert item.value == old
    seen: list[str] = []
    raced = 0  # reads that ended while the writer was still writing
    writing = True

    async def reader() -> None:
        nonlocal raced
        while writing or not seen:
            try:
                [got] = await c.get("ns", "big", page_size_bytes=2 * MIB)
            except KvCallError as e:
                assert e.code is grpc.StatusCode.ABORTED  # read again three times; still changing
                continue
            finally:
                raced += writing
            assert got.value in (old, new), "a value stitched from two writes"
            seen.append("old" if got.value == old else "new")

    task = asyncio.create_task(reader())
    try:
        # Write until the reader has ended three reads while writes were going on (bounded).
        for n in range(21):
            await c.put("ns", "big", {b"v": new if n % 2 == 0 else old})
            if raced >= 3 and n % 2 == 0:
                break
    finally:
        writing = False
        await asyncio.wait_for(task, 60)
    assert seen and raced >= 3, (seen, raced)
    [item] = await c.get("ns", "big")
    assert item.value == new


async def test_hostile_requests_get_one_clear_error_and_store_nothing(dal: Dal) -> None:
    c = dal.client
    raw = c.channel.unary_unary("/dgw.kv.v1.KeyValue/PutItems")

    async def refused(request: bytes) -> tuple[grpc.StatusCode, str]:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await raw(request, timeout=10)
        return caught.value.code(), caught.value.details() or ""

    good = kv_pb2.PutItemsRequest(namespace="ns", id="r", items=[kv_pb2.Item(key=b"k", value=b"v")],
                                  idempotency_token=new_token())  # fmt: skip
    utf8 = good.SerializeToString().replace(b"\x0a\x02ns", b"\x0a\x02\xff\xfe")
    assert await refused(utf8) == (grpc.StatusCode.INVALID_ARGUMENT, "namespace is not valid UTF-8")
    many = kv_pb2.PutItemsRequest(namespace="ns", id="r", idempotency_token=new_token(),
                                  items=[kv_pb2.Item(key=str(i).encode(), value=b"v") for i in range(10_000)])  # fmt: skip
    code, message = await refused(many.SerializeToString())
    assert code is grpc.StatusCode.INVALID_ARGUMENT and "limits.max_items_per_call" in message
    oversized = kv_pb2.PutItemsRequest(namespace="ns", id="r", idempotency_token=new_token(),
                                       items=[kv_pb2.Item(key=b"k", value=b"x" * (2 * MIB))])  # fmt: skip
    code, message = await refused(oversized.SerializeToString())
    assert code is grpc.StatusCode.INVALID_ARGUMENT and "limits.max_value_bytes" in message
    unknown = kv_pb2.PutItemsRequest(namespace="nope", id="r", items=good.items, idempotency_token=new_token())
    code, message = await refused(unknown.SerializeToString())
    assert code is grpc.StatusCode.FAILED_PRECONDITION and "not declared" in message
    malformed = kv_pb2.PutItemsRequest(namespace="ns", id="r", items=good.items,
                                       idempotency_token=kv_pb2.IdempotencyToken(generation_time_us=1, id=b"x"))  # fmt: skip
    code, message = await refused(malformed.SerializeToString())
    assert code is grpc.StatusCode.INVALID_ARGUMENT and "16 random bytes" in message
    code, message = await refused(b"\xff\xff\xff")
    assert code is grpc.StatusCode.INVALID_ARGUMENT and "not a valid dgw.kv.v1.PutItemsRequest" in message
    with pytest.raises(KvCallError) as caught:
        await c.get("ns", "r", page_size_bytes=64 * MIB)
    assert caught.value.code is grpc.StatusCode.INVALID_ARGUMENT and "limits.max_page_bytes" in caught.value.message
    assert [b.items async for b in c.scan("ns")] == [[]]
    # Each call counted as it came, and by how it ended.
    calls = {k: v for k, v in (await stats(dal)).items() if k.startswith("grpc.")}
    assert calls == {"grpc.PutItems": 6, "grpc.PutItems.INVALID_ARGUMENT": 5, "grpc.PutItems.FAILED_PRECONDITION": 1,
                     "grpc.GetItems": 1, "grpc.GetItems.INVALID_ARGUMENT": 1, "grpc.ScanItems": 1,
                     "grpc.ScanItems.OK": 1}  # fmt: skip


@pytest.mark.postgres
async def test_a_write_whose_caller_goes_away_is_counted_cancelled(caplog: pytest.LogCaptureFixture) -> None:
    """What a shadow target sees when Envoy resets a mirrored call: the DAL counts it and
    logs it, since the write may or may not have been applied."""
    await require_postgres()
    schema = f"kv_api_{secrets.token_hex(4)}"
    grpc_port, http_port = free_port(), free_port()
    engine = {"kind": "postgres", "dsn": POSTGRES_DSN, "schema": schema}
    try:
        async with running(kv_env(engine, grpc_port, http_port)):
            dal = Dal(grpc_port, http_port, KvClient.connect(f"127.0.0.1:{grpc_port}"))
            blocker = await asyncpg.connect(POSTGRES_DSN)
            try:
                async with blocker.transaction():  # the write waits for this lock while its caller goes away
                    await blocker.execute(f"LOCK TABLE {schema}.items IN ACCESS EXCLUSIVE MODE")
                    request = kv_pb2.PutItemsRequest(namespace="ns", id="r", items=[kv_pb2.Item(key=b"k", value=b"v")],
                                                     idempotency_token=new_token())  # fmt: skip
                    call = dal.client.stub.PutItems(request)
                    waiting = "SELECT count(*) FROM pg_stat_activity WHERE pg_backend_pid() = ANY(pg_blocking_pids(pid))"
                    end = asyncio.get_running_loop().time() + 10
                    while not await blocker.fetchval(waiting):
                        assert asyncio.get_running_loop().time() < end, "the write never reached PostgreSQL"
                        await asyncio.sleep(0.01)
                    call.cancel()
                    await eventually(lambda: "event=write_cancelled call=grpc.PutItems" in caplog.text, 10,
                                     what="the cancelled write logged")  # fmt: skip
            finally:
                await blocker.close()
                await dal.client.close()
            calls = {k: v for k, v in (await stats(dal)).items() if k.startswith("grpc.")}
            assert calls == {"grpc.PutItems": 1, "grpc.PutItems.CANCELLED": 1}
    finally:
        await drop_schema(schema)


async def stats(dal: Dal) -> dict[str, int]:
    async with aiohttp.ClientSession() as http, http.get(dal.url("/stats")) as r:
        counters: dict[str, int] = (await r.json())["counters"]
        return counters
