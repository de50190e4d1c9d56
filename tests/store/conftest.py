"""The contract suite runs once per backend: a backend is a name and an opener.

A distributed backend (etcd, a later issue) adds its opener to ``BACKENDS`` (with its
marker, e.g. ``etcd``) and must pass every test in ``test_contract.py`` unchanged."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from xds_server.store import ConfigStore, SqliteStore


async def _sqlite(tmp: Path) -> ConfigStore:
    return await SqliteStore.open(tmp / "data")


BACKENDS: dict[str, Callable[[Path], Awaitable[ConfigStore]]] = {"sqlite": _sqlite}


@pytest.fixture(params=sorted(BACKENDS))
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[ConfigStore]:
    opened = await BACKENDS[request.param](tmp_path)
    try:
        yield opened
    finally:
        await opened.close()
