"""What the KV tests share: the PostgreSQL they use, and how they clean up after it."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

import asyncpg
import pytest

from dals.kv.client import Delete, ItemRead, KvClient, Put, ScanBatch
from testkit.wait import wait_until
from tests.support.procs import Child

POSTGRES_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"


def kv_dal(name: str, engine: dict[str, object], ports: dict[str, int], log: Path,
           namespaces: Sequence[str] = ("gw",), **env: str) -> Child:  # fmt: skip
    """A KV DAL process serving ``namespaces`` on ``engine``, its listeners on ``ports``."""
    config = {"engines": {"main": engine}, "namespaces": {ns: {"engine": "main"} for ns in namespaces}}
    env = {"KV_CONFIG": json.dumps(config), "DGW_DAL_NAME": name, "KV_LOG_LEVEL": "WARNING",
           **{f"DGW_LISTENER_{k.upper()}_PORT": str(v) for k, v in ports.items()}, **env}  # fmt: skip
    child = Child([sys.executable, "-m", "dals.kv", "serve"], env, log=log)
    try:
        for port in ports.values():
            wait_until(lambda p=port: child.serving(p, f"KV DAL {name}"), 30, what=f"KV DAL {name} on {port}")
    except BaseException:
        child.stop()
        raise
    return child


async def require_postgres() -> None:
    """Fail (not skip) with a clear message when the PostgreSQL of the tests is missing:
    CI starts it, and a test that silently skipped would prove nothing."""
    try:
        conn = await asyncpg.connect(POSTGRES_DSN, timeout=5)
    except (OSError, asyncpg.PostgresError, TimeoutError) as e:
        pytest.fail(f"PostgreSQL is not answering at {POSTGRES_DSN} ({e}); start it "
                    "(pg_ctlcluster 15 main start) or deselect with -m 'not postgres'")  # fmt: skip
    await conn.close()


async def engine_config(kind: str, tmp: Path, schema: str) -> dict[str, object]:
    """A KV DAL's engine config for a test: a SQLite file in ``tmp``, or PostgreSQL in
    ``schema`` (checked to answer; drop it after with ``drop_schema``)."""
    if kind == "postgres":
        await require_postgres()
        return {"kind": "postgres", "dsn": POSTGRES_DSN, "schema": schema}
    return {"kind": "sqlite", "path": str(tmp / "kv.sqlite3"), "synchronous": "NORMAL"}


async def drop_schema(schema: str) -> None:
    conn = await asyncpg.connect(POSTGRES_DSN, timeout=5)
    try:
        await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    finally:
        await conn.close()


async def every_call(c: KvClient, ns: str, prefix: str) -> None:
    """Each call of the API once, checked: what every engine must answer alike, directly
    or through a gateway. Records are named ``PREFIX-...``."""
    one, two = f"{prefix}-1", f"{prefix}-2"
    assert await c.put(ns, one, {b"name": b"Ada", b"lang": b"en", b"city": b"London"}) == 3
    assert {i.key: i.value for i in await c.get(ns, one)} == {b"name": b"Ada", b"lang": b"en", b"city": b"London"}
    assert [i.key for i in await c.get(ns, one, keys=[b"name", b"nope"])] == [b"name"]
    assert [i.key for i in await c.get(ns, one, start=b"c", end=b"m")] == [b"city", b"lang"]
    assert await c.delete(ns, one, keys=[b"lang"]) == 1
    assert await c.mutate(ns, one, [Delete(start=b"c", end=b"d"), Put(b"zip", b"NW1")]) == 2
    items = await c.get(ns, one, with_write_times=True)
    assert {i.key: i.value for i in items} == {b"name": b"Ada", b"zip": b"NW1"}
    assert all(i.write_time_us > 0 and len(i.writer_id) == 16 for i in items)
    await c.put(ns, two, {b"name": b"Grace"})
    scanned = [(rid, i.key) async for batch in c.scan(ns) for rid, i in _items(batch)]
    assert [x for x in scanned if x[0] in (one, two)] == [(one, b"name"), (one, b"zip"), (two, b"name")]
    big = bytes(range(256)) * (5 * 1024 * 1024 // 256)  # 5 MiB: staged in chunks, committed at once
    assert await c.put(ns, two, {b"big": big}) == 1
    assert {i.key: i.value for i in await c.get(ns, two)} == {b"big": big, b"name": b"Grace"}
    assert await c.delete(ns, one) == 2
    assert await c.get(ns, one) == []


def _items(batch: ScanBatch) -> list[tuple[str, ItemRead]]:
    return batch.items
