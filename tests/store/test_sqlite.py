"""The SQLite backend's own promises: where and how it keeps its file, who may open it,
what it says when it cannot."""

from __future__ import annotations

import sqlite3
import stat
from pathlib import Path

import pytest

from xds_server.store import (
    API_OWNER,
    DATA_DIR_ENV,
    DataDirInUse,
    SqliteStore,
    StoreError,
    default_data_dir,
)
from xds_server.store.sqlite import DB_NAME


async def test_files_are_private_and_the_journal_is_wal(tmp_path: Path) -> None:
    data = tmp_path / "data"
    store = await SqliteStore.open(data)
    try:
        await store.put(
            "demo",
            "secret: x\n",
            base_version=None,
            author="a",
            message="",
            source="api",
            owner=API_OWNER,
        )
        assert stat.S_IMODE(data.stat().st_mode) == 0o700
        files = {p.name: stat.S_IMODE(p.stat().st_mode) for p in data.iterdir()}
        assert {DB_NAME, f"{DB_NAME}-wal"} <= files.keys()
        assert {name: mode for name, mode in files.items() if mode & 0o077} == {}
    finally:
        await store.close()
    with sqlite3.connect(data / DB_NAME) as db:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)


async def test_a_reopened_store_has_every_write(tmp_path: Path) -> None:
    store = await SqliteStore.open(tmp_path)
    v1 = await store.put(
        "demo", "a: 1\n", base_version=None, author="a", message="m", source="api", owner=API_OWNER
    )
    v2 = await store.put(
        "demo", "a: 2\n", base_version=1, author="b", message="n", source="file", owner="file:x"
    )
    await store.append_audit(
        actor="a", action="put", shard="demo", base_version=1, new_version=2, accepted=True
    )
    await store.close()
    again = await SqliteStore.open(tmp_path)
    try:
        assert await again.history("demo") == (v2, v1)
        got = await again.get("demo")
        assert got is not None and got.text == "a: 2\n"
        assert len(await again.audit_log()) == 1
        v3 = await again.put(
            "demo", "a: 3\n", base_version=2, author="c", message="", source="api", owner=API_OWNER
        )
        assert v3.revision > v2.revision
    finally:
        await again.close()


async def test_a_second_opener_of_the_data_dir_is_refused(tmp_path: Path) -> None:
    store = await SqliteStore.open(tmp_path)
    try:
        with pytest.raises(DataDirInUse, match=rf"{tmp_path}.*in use .*--data-dir"):
            await SqliteStore.open(tmp_path)
    finally:
        await store.close()
    await (await SqliteStore.open(tmp_path)).close()  # free again once closed


async def test_a_file_that_is_not_a_store_is_named_in_the_error(tmp_path: Path) -> None:
    (tmp_path / DB_NAME).write_bytes(b"not a database at all, just some bytes" * 100)
    for _ in range(2):  # the same error again: a failed open keeps no lock on the directory
        with pytest.raises(StoreError, match=rf"{tmp_path / DB_NAME}.*cannot be opened"):
            await SqliteStore.open(tmp_path)


async def test_a_store_written_by_a_newer_dgw_is_refused(tmp_path: Path) -> None:
    await (await SqliteStore.open(tmp_path)).close()
    with sqlite3.connect(tmp_path / DB_NAME) as db:
        db.execute("PRAGMA user_version = 99")
    with pytest.raises(StoreError, match="schema 99"):
        await SqliteStore.open(tmp_path)


async def test_a_store_of_schema_1_gains_records_and_keeps_its_shards(tmp_path: Path) -> None:
    store = await SqliteStore.open(tmp_path)
    v1 = await store.put("demo", "a: 1\n", base_version=None, author="a", message="", source="api",
                         owner=API_OWNER)  # fmt: skip
    await store.close()
    with sqlite3.connect(tmp_path / DB_NAME) as db:  # as the previous dgw left it
        db.execute("DROP TABLE records")
        db.execute("PRAGMA user_version = 1")
    again = await SqliteStore.open(tmp_path)
    try:
        got = await again.get("demo")
        assert got is not None and got.meta == v1
        record = await again.put_record("migration", "demo", "{}", base_version=None)
        assert await again.get_record("migration", "demo") == record
    finally:
        await again.close()


async def test_operations_on_a_closed_store_say_so(tmp_path: Path) -> None:
    store = await SqliteStore.open(tmp_path)
    await store.close()
    with pytest.raises(StoreError, match="closed"):
        await store.get("demo")


def test_the_default_data_dir() -> None:
    assert default_data_dir({DATA_DIR_ENV: "/srv/dgw"}) == Path("/srv/dgw")
    assert default_data_dir({"XDG_DATA_HOME": "/home/u/.data"}) == Path("/home/u/.data/dgw")
    assert default_data_dir({}) == Path.home() / ".local" / "share" / "dgw"


async def test_a_text_is_stored_once_however_many_versions_carry_it(tmp_path: Path) -> None:
    store = await SqliteStore.open(tmp_path)
    try:
        base = None
        for text in ["a: 1\n", "a: 2\n", "a: 1\n", "a: 1\n"]:
            base = (await store.put("demo", text, base_version=base, author="a", message="", source="api",
                                    owner=API_OWNER)).number  # fmt: skip
        await store.put(
            "other",
            "a: 2\n",
            base_version=None,
            author="a",
            message="",
            source="api",
            owner=API_OWNER,
        )
        versions = [await store.version("demo", n) for n in range(1, 5)]
        assert [v.text for v in versions if v] == ["a: 1\n", "a: 2\n", "a: 1\n", "a: 1\n"]
    finally:
        await store.close()
    with sqlite3.connect(tmp_path / DB_NAME) as db:
        assert db.execute("SELECT count(*) FROM texts").fetchone() == (2,)
