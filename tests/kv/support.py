"""What the KV tests share: the PostgreSQL they use, and how they clean up after it."""

from __future__ import annotations

import asyncpg
import pytest

POSTGRES_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"


async def require_postgres() -> None:
    """Fail (not skip) with a clear message when the PostgreSQL of the tests is missing:
    CI starts it, and a test that silently skipped would prove nothing."""
    try:
        conn = await asyncpg.connect(POSTGRES_DSN, timeout=5)
    except (OSError, asyncpg.PostgresError, TimeoutError) as e:
        pytest.fail(f"PostgreSQL is not answering at {POSTGRES_DSN} ({e}); start it "
                    "(pg_ctlcluster 15 main start) or deselect with -m 'not postgres'")  # fmt: skip
    await conn.close()


async def drop_schema(schema: str) -> None:
    conn = await asyncpg.connect(POSTGRES_DSN, timeout=5)
    try:
        await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    finally:
        await conn.close()
