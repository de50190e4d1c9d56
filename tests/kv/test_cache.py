"""The look-aside cache (``dals/kv/cache.py``) with a real Redis: a private
``redis-server`` on a free loopback port (stopped and paused by these tests, never the
shared one on 6379), in front of a SQLite engine."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest
import redis

from dals.kv.cache import LookasideCache
from dals.kv.config import KvConfig
from dals.kv.engines.sqlite import SqliteEngine
from dals.kv.service import KvService
from dals.kv.tokens import new_token
from dals.kv.v1 import kv_pb2
from testkit.redis import RedisServer

pytestmark = pytest.mark.redis


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    private = RedisServer(tmp_path).start()
    try:
        yield private
    finally:
        private.stop()


@pytest.fixture
async def svc(tmp_path: Path, server: RedisServer) -> AsyncIterator[KvService]:
    config = KvConfig.model_validate({
        "engines": {"local": {"kind": "sqlite", "path": str(tmp_path / "kv.sqlite3"), "synchronous": "NORMAL"}},
        "cache": {"url": server.url, "prefix": "test:", "retry_s": 0.2, "timeout_ms": 100},
        "namespaces": {"hot": {"engine": "local", "cache_ttl_s": 60}, "cold": {"engine": "local"}},
    })  # fmt: skip
    assert config.cache is not None
    engine = await SqliteEngine.open(tmp_path / "kv.sqlite3", "NORMAL")
    service = KvService(config, {"local": engine}, LookasideCache(config.cache))
    try:
        yield service
    finally:
        await service.close()


async def put(svc: KvService, value: bytes, ns: str = "hot") -> None:
    req = kv_pb2.PutItemsRequest(namespace=ns, id="r", items=[kv_pb2.Item(key=b"k", value=value)],
                                 idempotency_token=new_token())  # fmt: skip
    await svc.put_items(req, req.ByteSize())


async def get(svc: KvService, ns: str = "hot") -> bytes:
    data = await svc.get_items(kv_pb2.GetItemsRequest(namespace=ns, id="r"), 10)
    [item] = kv_pb2.GetItemsResponse.FromString(data).items
    return item.value


async def test_reads_are_served_from_the_cache_and_a_write_is_read_back_at_once(svc: KvService) -> None:
    cache = svc.cache
    assert cache is not None
    await put(svc, b"one")
    assert await get(svc) == b"one" and (cache.stats.misses, cache.stats.hits) == (1, 0)
    assert await get(svc) == b"one" and cache.stats.hits == 1
    await put(svc, b"two")
    assert await get(svc) == b"two"  # the writer reads its own write
    assert await get(svc) == b"two" and cache.stats.hits == 2
    await put(svc, b"x", ns="cold")
    assert await get(svc, "cold") == b"x" and await get(svc, "cold") == b"x"
    assert cache.stats.hits == 2  # a namespace without cache_ttl_s is never cached


async def test_calls_go_on_while_redis_is_stopped_and_the_cache_serves_again_after(
    svc: KvService, server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    cache = svc.cache
    assert cache is not None
    caplog.set_level(logging.WARNING, "dals.kv.cache")
    await put(svc, b"before")
    assert await get(svc) == b"before" and await get(svc) == b"before" and cache.stats.hits == 1

    server.stop()
    await put(svc, b"during")
    assert await get(svc) == b"during"  # from the engine
    assert await get(svc) == b"during"
    assert cache.stats.state == "down" and "event=cache_down" in caplog.text

    server.start()
    hits = cache.stats.hits

    async def cached_again() -> bool:
        return await get(svc) == b"during" and cache.stats.hits > hits

    assert await until(cached_again)
    assert "event=cache_up" in caplog.text


async def test_a_write_while_redis_does_not_answer_is_never_read_stale_after(
    svc: KvService, server: RedisServer
) -> None:
    """Redis keeps its data but stops answering (CLIENT PAUSE): the write cannot
    invalidate, so it is remembered and done before the cache serves again."""
    cache = svc.cache
    assert cache is not None
    await put(svc, b"old")
    assert await get(svc) == b"old" and await get(svc) == b"old" and cache.stats.hits == 1
    admin = redis.Redis.from_url(server.url)
    try:
        admin.execute_command("CLIENT", "PAUSE", "1500", "ALL")
        await put(svc, b"new")  # its invalidation times out: the record is remembered
        assert cache.stats.state == "down" and cache.stats.pending == 1
        assert await get(svc) == b"new"

        async def recovered() -> bool:
            return await get(svc) == b"new" and cache.stats.state == "up"

        assert await until(recovered)
        assert cache.stats.pending == 0 and await get(svc) == b"new"
    finally:
        admin.close()


async def until(check: Callable[[], Awaitable[bool]], timeout: float = 15.0) -> bool:
    """Poll an async check with a deadline (testkit's ``eventually`` polls sync ones)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if await check():
            return True
        await asyncio.sleep(0.05)
    return False
