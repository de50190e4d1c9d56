"""Where the demo shard's Key-Value DALs keep their data, decided by ``dgw up`` before
the server reads the shard (which takes ``${DGW_...}`` variables from this process).

- ``DGW_UP_STATE_DIR``: the run's state directory (absolute), so DAL files land there.
- ``DGW_DEMO_KV_PREFIX``, ``DGW_DEMO_PG_SCHEMA``: for an instance other than ``default``
  (``dgw up --name N``), a Redis key prefix and a PostgreSQL schema named for its node
  id (unique to its state dir), so two instances, or two users' instances of one name,
  never read each other's cache or tables. A value the user set is kept.
- ``DGW_DEMO_CQL_ENGINE``: ``postgres`` when PostgreSQL answers at
  ``DGW_DEMO_POSTGRES_DSN`` (default 127.0.0.1:5432, user postgres), else ``sqlite`` (a
  second file): the shadow target ``cql`` is the seed's new datastore. A value the
  user set is kept. The choice is logged with its reason.

Nothing here imports a DAL: the probe is one connection and ``SELECT 1``.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import MutableMapping
from dataclasses import dataclass

DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
PROBE_TIMEOUT_S = 3.0


@dataclass(frozen=True)
class StorageChoice:
    engine: str
    reason: str


async def probe_postgres(dsn: str, timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """None when PostgreSQL at ``dsn`` answers a query, else why not."""
    import asyncpg

    try:
        conn = await asyncio.wait_for(asyncpg.connect(dsn, timeout=timeout), timeout + 1)
    except (OSError, asyncpg.PostgresError, TimeoutError) as e:
        return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
    try:
        await conn.fetchval("SELECT 1")
    finally:
        await conn.close()
    return None


async def prepare(state_dir: str, scope: str | None = None,
                  env: MutableMapping[str, str] = os.environ) -> StorageChoice:  # fmt: skip
    """``state_dir``: absolute. ``scope``: what names an instance's own cache prefix and
    schema (None: the default instance's, as the README shows them)."""
    env.setdefault("DGW_UP_STATE_DIR", state_dir)
    if scope is not None:
        env.setdefault("DGW_DEMO_KV_PREFIX", f"dgw-demo-{scope}")
        env.setdefault("DGW_DEMO_PG_SCHEMA", "dgw_demo_cql_" + re.sub(r"[^a-z0-9_]", "_", scope.lower()))
    if env.get("DGW_DEMO_CQL_ENGINE"):
        return StorageChoice(env["DGW_DEMO_CQL_ENGINE"], "DGW_DEMO_CQL_ENGINE is set")
    dsn = env.get("DGW_DEMO_POSTGRES_DSN") or DEFAULT_DSN
    where = dsn.rpartition("@")[2]
    problem = await probe_postgres(dsn)
    if problem is None:
        env["DGW_DEMO_CQL_ENGINE"] = "postgres"
        return StorageChoice("postgres", f"PostgreSQL answers at {where}")
    env["DGW_DEMO_CQL_ENGINE"] = "sqlite"
    return StorageChoice("sqlite", f"no PostgreSQL at {where} ({problem}); set DGW_DEMO_POSTGRES_DSN to use another")
