"""The contract suite runs once per backend: a backend is a name, an opener and the
marks its tests carry. Every backend must pass every test in ``test_contract.py``
unchanged; etcd's run against one real member (``tests/support/etcd.py``), each test
under a key prefix of its own."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from tests.support.etcd import etcd, store_url
from xds_server.store import ConfigStore, SqliteStore
from xds_server.store.etcd import EtcdStore

__all__ = ["etcd"]


async def _sqlite(request: pytest.FixtureRequest, tmp: Path) -> ConfigStore:
    return await SqliteStore.open(tmp / "data")


async def _etcd(request: pytest.FixtureRequest, tmp: Path) -> ConfigStore:
    return await EtcdStore.open(store_url(request.getfixturevalue("etcd")))


BACKENDS: dict[str, Callable[[pytest.FixtureRequest, Path], Awaitable[ConfigStore]]] = {
    "sqlite": _sqlite,
    "etcd": _etcd,
}
MARKS = {"etcd": [pytest.mark.etcd]}


@pytest.fixture(params=[pytest.param(name, marks=MARKS.get(name, [])) for name in sorted(BACKENDS)])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[ConfigStore]:
    opened = await BACKENDS[request.param](request, tmp_path)
    try:
        yield opened
    finally:
        await opened.close()
