"""Two real KV DAL processes for the runner's tests: the source on SQLite, the target on
PostgreSQL (a schema of its own, dropped afterwards), each serving namespaces ``ns``
and ``other`` and the migration contract on its gRPC port. And, for the migrations'
routes, the in-process server and admin API client of tests/api (``server``, ``api``)."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from testkit.ports import free_port
from testkit.procs import Child
from tests.api.conftest import api, server
from tests.kv.support import POSTGRES_DSN, drop_schema, kv_dal, require_postgres

__all__ = ["api", "server"]

NAMESPACES = ("ns", "other")


@dataclass
class KvDal:
    name: str
    port: int
    child: Child
    engine: dict[str, object]

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"


@dataclass
class Pair:
    source: KvDal
    target: KvDal
    schema: str
    """The target's PostgreSQL schema."""
    sqlite: Path
    """The source's database file."""
    tmp: Path


def start_dal(
    name: str, engine: dict[str, object], tmp: Path, extra: dict[str, str] | None = None
) -> KvDal:
    port = free_port()
    child = kv_dal(name, engine, {"rpc_grpc": port}, tmp / f"{name}.log", NAMESPACES, **(extra or {}))
    return KvDal(name, port, child, engine)


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[Pair]:
    asyncio.run(require_postgres())
    schema = f"kv_mig_{secrets.token_hex(4)}"
    sqlite = tmp_path / "source.sqlite3"
    source = start_dal(
        "thrift", {"kind": "sqlite", "path": str(sqlite), "synchronous": "NORMAL"}, tmp_path
    )
    try:
        target = start_dal(
            "cql", {"kind": "postgres", "dsn": POSTGRES_DSN, "schema": schema}, tmp_path
        )
        try:
            yield Pair(source, target, schema, sqlite, tmp_path)
        finally:
            target.child.stop()
    finally:
        source.child.stop()
        asyncio.run(drop_schema(schema))
