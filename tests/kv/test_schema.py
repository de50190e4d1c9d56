"""Each engine creates its schema on first open and brings an older one up to date
(the later steps only), keeping the data; a schema newer than the code is refused."""

from __future__ import annotations

import secrets
import sqlite3
from pathlib import Path

import asyncpg
import pytest

from dals.kv.engines import EngineError, KeyRange, Version
from dals.kv.engines.base import Batch
from dals.kv.engines.postgres import SCHEMA_VERSION as PG_VERSION
from dals.kv.engines.postgres import PostgresEngine
from dals.kv.engines.sqlite import SCHEMA_VERSION, SqliteEngine
from tests.kv.support import POSTGRES_DSN, drop_schema, require_postgres

V = Version(10, bytes(16))
ONE = Batch(items=((b"k", b"v"),))


async def test_sqlite_upgrades_an_older_schema_and_refuses_a_newer_one(tmp_path: Path) -> None:
    path = tmp_path / "kv.sqlite3"
    engine = await SqliteEngine.open(path)
    await engine.write("ns", "r", ONE, V)
    await engine.close()
    db = sqlite3.connect(path)
    db.execute("DROP TABLE commits")  # back to schema 2
    db.execute("UPDATE meta SET value = '2' WHERE name = 'schema_version'")
    db.commit()
    engine = await SqliteEngine.open(path)
    try:
        assert [i.value for i in await engine.read_items("ns", "r", KeyRange(), None, 10)] == [b"v"]
        assert db.execute("SELECT value FROM meta").fetchone() == (str(SCHEMA_VERSION),)
        assert db.execute("SELECT count(*) FROM commits").fetchone() == (0,)
    finally:
        await engine.close()
    db.execute("UPDATE meta SET value = '99' WHERE name = 'schema_version'")
    db.commit()
    db.close()
    with pytest.raises(EngineError, match="schema version 99 is newer than this DAL knows"):
        await SqliteEngine.open(path)


@pytest.mark.postgres
async def test_postgres_upgrades_an_older_schema_and_refuses_a_newer_one() -> None:
    await require_postgres()
    schema = f"kv_schema_{secrets.token_hex(4)}"
    try:
        engine = await PostgresEngine.open(POSTGRES_DSN, schema)
        await engine.write("ns", "r", ONE, V)
        await engine.close()
        conn = await asyncpg.connect(POSTGRES_DSN)
        try:
            await conn.execute(f"DROP TABLE {schema}.commits")
            await conn.execute(f"UPDATE {schema}.meta SET value = '2'")
            engine = await PostgresEngine.open(POSTGRES_DSN, schema)
            assert [i.value for i in await engine.read_items("ns", "r", KeyRange(), None, 10)] == [b"v"]
            await engine.close()
            assert await conn.fetchval(f"SELECT value FROM {schema}.meta") == str(PG_VERSION)
            assert await conn.fetchval(f"SELECT count(*) FROM {schema}.commits") == 0
            await conn.execute(f"UPDATE {schema}.meta SET value = '99'")
        finally:
            await conn.close()
        with pytest.raises(EngineError, match="version 99 is newer than this DAL knows"):
            await PostgresEngine.open(POSTGRES_DSN, schema)
    finally:
        await drop_schema(schema)
