"""Engines for the KV tests: each test that takes ``engine`` runs once per engine.

SQLite gets a file in the test's temporary directory; PostgreSQL (127.0.0.1:5432,
marker ``postgres``) a schema of its own with a random suffix, dropped afterwards."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from dals.kv.engines import Engine
from dals.kv.engines.postgres import PostgresEngine
from dals.kv.engines.sqlite import SqliteEngine
from tests.kv.support import POSTGRES_DSN, drop_schema, require_postgres


async def _sqlite(tmp: Path) -> tuple[Engine, Callable[[], Awaitable[None]]]:
    engine = await SqliteEngine.open(tmp / "kv.sqlite3")
    return engine, engine.close


async def _postgres(tmp: Path) -> tuple[Engine, Callable[[], Awaitable[None]]]:
    await require_postgres()
    schema = f"kv_test_{secrets.token_hex(4)}"
    engine = await PostgresEngine.open(POSTGRES_DSN, schema)

    async def close() -> None:
        await engine.close()
        await drop_schema(schema)

    return engine, close


ENGINES = {"sqlite": _sqlite, "postgres": _postgres}
MARKS = {"sqlite": [], "postgres": [pytest.mark.postgres]}


@pytest.fixture(params=[pytest.param(name, marks=MARKS[name]) for name in ENGINES])
async def engine(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Engine]:
    opened, close = await ENGINES[request.param](tmp_path)
    try:
        yield opened
    finally:
        await close()
