"""The embedded config store: one SQLite database in the data directory.

Durability: WAL journal with ``synchronous=FULL``, so a write is on disk (the WAL
fsynced) before ``put`` returns, and each write is one transaction — a ``kill -9`` or a
power cut at any moment leaves every acknowledged write in and no partial one.

Concurrency: one connection, used by one thread. Every query runs there, off the event
loop, one at a time; that thread is the only writer, so the compare-and-set check and
the insert it guards cannot interleave with another write. An exclusive lock on
``store.lock`` keeps a second process off the same directory (its writes would not
wake this process's watches).

The database file is 0600 and the directory 0700: shard texts may hold secrets. SQLite
creates its ``-wal`` and ``-shm`` files with the database file's mode.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import fcntl
import os
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar, cast

from xds_server.store.base import (
    AuditEntry,
    Conflict,
    DataDirInUse,
    Listing,
    NotFound,
    Record,
    RecordConflict,
    ShardVersion,
    Source,
    StoreError,
    Version,
    Write,
    check_record_key,
    content_hash,
)

T = TypeVar("T")

DB_NAME = "store.sqlite3"
LOCK_NAME = "store.lock"
SCHEMA_VERSION = 2  # 2: records

# History is the long read, so versions are clustered by (shard, number): a shard's
# history is one range of the table, read in order. Texts are kept apart, once per
# content hash: history reads small rows only (10,000 versions in a few MB, not a page
# each), and a rollback or an unchanged file does not store its text again. `heads`
# names each shard's current number, so listing every shard reads one row per shard.
_SCHEMA = """
CREATE TABLE texts (
    content_hash TEXT PRIMARY KEY,
    text         TEXT NOT NULL
);
CREATE TABLE versions (
    shard        TEXT    NOT NULL,
    number       INTEGER NOT NULL CHECK (number > 0),
    revision     INTEGER NOT NULL UNIQUE,
    author       TEXT    NOT NULL,
    at           TEXT    NOT NULL,
    message      TEXT    NOT NULL,
    source       TEXT    NOT NULL CHECK (source IN ('api', 'file', 'rollback')),
    owner        TEXT    NOT NULL,
    content_hash TEXT    NOT NULL REFERENCES texts (content_hash),
    deleted      INTEGER NOT NULL CHECK (deleted IN (0, 1)),
    PRIMARY KEY (shard, number)
) WITHOUT ROWID;
CREATE TABLE heads (
    shard  TEXT    PRIMARY KEY,
    number INTEGER NOT NULL,
    FOREIGN KEY (shard, number) REFERENCES versions (shard, number)
) WITHOUT ROWID;
CREATE TABLE audit (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    at           TEXT    NOT NULL,
    actor        TEXT    NOT NULL,
    action       TEXT    NOT NULL,
    shard        TEXT,
    base_version INTEGER,
    new_version  INTEGER,
    accepted     INTEGER NOT NULL CHECK (accepted IN (0, 1)),
    reason       TEXT    NOT NULL
);
CREATE INDEX audit_by_shard ON audit (shard, id);
"""

# Added by schema 2: a store of schema 1 gains it on open, keeping everything else.
_RECORDS = """
CREATE TABLE IF NOT EXISTS records (
    kind    TEXT    NOT NULL,
    name    TEXT    NOT NULL,
    version INTEGER NOT NULL CHECK (version > 0),
    data    TEXT    NOT NULL,
    at      TEXT    NOT NULL,
    PRIMARY KEY (kind, name)
) WITHOUT ROWID
"""

_META = "shard, number, revision, author, at, message, source, owner, content_hash, deleted"
_HISTORY = _META.removeprefix("shard, ")
_WITH_TEXT = f"SELECT {_META}, text FROM versions JOIN texts USING (content_hash)"
_AUDIT = "id, at, actor, action, shard, base_version, new_version, accepted, reason"
_RECORD = "kind, name, version, data, at"
# Changes a watch reads per query: bounds the memory one slow watcher can pin.
_WATCH_BATCH = 256


def _utc_now() -> datetime:
    return datetime.now(UTC)


class SqliteStore:
    """``ConfigStore`` over SQLite. Open with ``await SqliteStore.open(data_dir)``."""

    def __init__(self, path: Path, executor: ThreadPoolExecutor, conn: sqlite3.Connection,
                 lock_fd: int, clock: Callable[[], datetime]):  # fmt: skip
        self.path = path
        self._executor = executor
        self._conn = conn
        self._lock_fd = lock_fd
        self._clock = clock
        self._closed = False
        # Replaced after every write: a watch takes the current one before it reads,
        # so a write that lands after its read still wakes it.
        self._changed = asyncio.Event()

    @classmethod
    async def open(cls, data_dir: Path, *, clock: Callable[[], datetime] = _utc_now) -> SqliteStore:
        """Open (creating if needed) the store in ``data_dir``. Raises ``DataDirInUse``
        if another process has it open, ``StoreError`` if the database is unusable."""
        data_dir = Path(data_dir)
        lock_fd = _lock(data_dir)
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="config-store")
        path = data_dir / DB_NAME
        try:
            conn = await asyncio.get_running_loop().run_in_executor(executor, _connect, path)
        except BaseException:
            executor.shutdown(wait=False)
            os.close(lock_fd)
            raise
        return cls(path, executor, conn, lock_fd, clock)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._wake()
        try:
            await asyncio.get_running_loop().run_in_executor(self._executor, self._conn.close)
        finally:
            self._executor.shutdown(wait=True)
            os.close(self._lock_fd)

    # --- reads ----------------------------------------------------------------

    async def get(self, shard: str) -> ShardVersion | None:
        entry = await self._run(self._head_entry, shard)
        return None if entry is None or entry.meta.deleted else entry

    async def list(self) -> Listing:
        return await self._run(self._list)

    async def history(
        self, shard: str, *, limit: int = 100, before: int | None = None
    ) -> tuple[Version, ...]:
        _check_limit(limit)
        return await self._run(self._history, shard, limit, before)

    async def version(self, shard: str, number: int) -> ShardVersion | None:
        rows = await self._run(self._query, f"{_WITH_TEXT} WHERE shard = ? AND number = ?",
                               (shard, number))  # fmt: skip
        return _entry(rows[0]) if rows else None

    async def audit_log(
        self, *, limit: int = 100, before: int | None = None, shard: str | None = None
    ) -> tuple[AuditEntry, ...]:
        _check_limit(limit)
        # `list` is a method here: the builtin by its full name.
        where: builtins.list[str] = []
        params: builtins.list[str | int] = []
        if shard is not None:
            where.append("shard = ?")
            params.append(shard)
        if before is not None:
            where.append("id < ?")
            params.append(before)
        sql = f"SELECT {_AUDIT} FROM audit {'WHERE ' + ' AND '.join(where) if where else ''} ORDER BY id DESC LIMIT ?"
        rows = await self._run(self._query, sql, (*params, limit))
        return tuple(_audit(r) for r in rows)

    async def watch(self, after_revision: int = 0) -> AsyncIterator[ShardVersion]:
        revision = after_revision
        while not self._closed:
            changed = self._changed
            try:
                rows = await self._run(self._query, f"{_WITH_TEXT} WHERE revision > ? "
                                       "ORDER BY revision LIMIT ?", (revision, _WATCH_BATCH))  # fmt: skip
            except StoreError:
                if self._closed:
                    return
                raise
            for row in rows:
                entry = _entry(row)
                revision = entry.meta.revision
                yield entry
            if len(rows) < _WATCH_BATCH:
                await changed.wait()

    # --- writes ---------------------------------------------------------------

    async def put(
        self,
        shard: str,
        text: str,
        *,
        base_version: int | None,
        author: str,
        message: str,
        source: Source,
        owner: str,
    ) -> Version:
        if not shard:
            raise ValueError("a shard needs a name")
        return await self._run(
            self._write,
            shard,
            base_version,
            False,
            text,
            author,
            message,
            source,
            owner,
            wakes=True,
        )

    async def put_many(
        self, writes: Sequence[Write], *, author: str, message: str, source: Source
    ) -> tuple[Version, ...]:
        if any(not w.shard for w in writes):
            raise ValueError("a shard needs a name")
        if len({w.shard for w in writes}) != len(writes):
            raise ValueError("put_many: each shard at most once")
        return await self._run(self._write_many, tuple(writes), author, message, source, wakes=True)

    async def delete(self, shard: str, *, base_version: int, author: str, message: str) -> Version:
        return await self._run(
            self._write, shard, base_version, True, "", author, message, "api", None, wakes=True
        )

    async def append_audit(
        self,
        *,
        actor: str,
        action: str,
        shard: str | None,
        base_version: int | None,
        new_version: int | None,
        accepted: bool,
        reason: str = "",
    ) -> AuditEntry:
        row = (
            self._clock().isoformat(),
            actor,
            action,
            shard,
            base_version,
            new_version,
            int(accepted),
            reason,
        )
        return await self._run(self._append_audit, row)

    # --- records --------------------------------------------------------------

    async def get_record(self, kind: str, name: str) -> Record | None:
        return await self._run(self._record, kind, name)

    async def list_records(self, kind: str) -> tuple[Record, ...]:
        rows = await self._run(self._query, f"SELECT {_RECORD} FROM records WHERE kind = ? ORDER BY name",
                               (kind,))  # fmt: skip
        return tuple(_record(r) for r in rows)

    async def put_record(
        self, kind: str, name: str, data: str, *, base_version: int | None
    ) -> Record:
        check_record_key(kind, name)
        return await self._run(self._put_record, kind, name, data, base_version, wakes=True)

    async def delete_record(self, kind: str, name: str, *, base_version: int) -> None:
        await self._run(self._delete_record, kind, name, base_version, wakes=True)

    # --- on the store's thread ------------------------------------------------

    async def _run(self, fn: Callable[..., T], *args: Any, wakes: bool = False) -> T:
        """``fn(*args)`` on the store's thread. ``wakes``: a write, which runs to its end
        even if the caller is cancelled meanwhile (a cancelled caller could not tell
        whether it committed anyway), and wakes the watches when it is done."""
        if self._closed:
            raise StoreError(f"the config store {self.path} is closed")
        done = self._executor.submit(fn, *args)
        if wakes:
            loop = asyncio.get_running_loop()
            done.add_done_callback(lambda _: loop.call_soon_threadsafe(self._wake))
        try:
            if wakes:
                return await asyncio.shield(asyncio.wrap_future(done))
            return await asyncio.wrap_future(done)
        except sqlite3.Error as e:
            raise StoreError(f"config store {self.path}: {e}") from e

    def _wake(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def _query(self, sql: str, params: tuple[Any, ...]) -> builtins.list[tuple[Any, ...]]:
        return self._conn.execute(sql, params).fetchall()

    def _head(self, shard: str) -> Version | None:
        row = self._conn.execute(
            f"SELECT {_META} FROM versions WHERE shard = ? ORDER BY number DESC LIMIT 1",
            (shard,),
        ).fetchone()
        return None if row is None else _version(row)

    def _head_entry(self, shard: str) -> ShardVersion | None:
        row = self._conn.execute(
            f"{_WITH_TEXT} WHERE shard = ? ORDER BY number DESC LIMIT 1",
            (shard,),
        ).fetchone()
        return None if row is None else _entry(row)

    def _list(self) -> Listing:
        with _transaction(self._conn, "BEGIN"):
            (revision,) = self._conn.execute(
                "SELECT coalesce(max(revision), 0) FROM versions"
            ).fetchone()
            rows = self._conn.execute(
                f"{_WITH_TEXT} JOIN heads USING (shard, number) WHERE deleted = 0 ORDER BY shard"
            ).fetchall()
        return Listing(revision, tuple(_entry(r) for r in rows))

    def _history(self, shard: str, limit: int, before: int | None) -> tuple[Version, ...]:
        # The hot path of a long history (10,000 versions in ≤ 50 ms): no shard column
        # (it is the one asked for), no generator, no helper call per row, and the
        # tuple made directly (what NamedTuple's own `_make` does), skipping the
        # generated `__new__`: a third of the Python time.
        below = "" if before is None else "AND number < ?"
        params = (shard, limit) if before is None else (shard, before, limit)
        cursor = self._conn.execute(
            f"SELECT {_HISTORY} FROM versions WHERE shard = ? {below} ORDER BY number DESC LIMIT ?",
            params,
        )
        parse, make = datetime.fromisoformat, tuple.__new__
        return tuple([
            make(Version, (shard, number, revision, author, parse(at), message, source, owner, digest, deleted == 1))
            for number, revision, author, at, message, source, owner, digest, deleted in cursor
        ])  # fmt: skip

    def _write(self, shard: str, base: int | None, deleted: bool, text: str, author: str, message: str,
               source: Source, owner: str | None) -> Version:  # fmt: skip
        with _transaction(self._conn, "BEGIN IMMEDIATE"):
            return self._insert(shard, base, deleted, text, author, message, source, owner)

    def _write_many(self, writes: tuple[Write, ...], author: str, message: str,
                    source: Source) -> tuple[Version, ...]:  # fmt: skip
        with _transaction(self._conn, "BEGIN IMMEDIATE"):
            return tuple(
                self._insert(w.shard, w.base_version, False, w.text, author, message, source, w.owner)
                for w in writes
            )

    def _insert(self, shard: str, base: int | None, deleted: bool, text: str, author: str, message: str,
                source: Source, owner: str | None) -> Version:  # fmt: skip
        """One version, inside the caller's transaction (a raise rolls it all back)."""
        head = self._head(shard)
        if deleted and (head is None or head.deleted):
            raise NotFound(
                f"shard {shard!r} does not exist" + (" (it is already deleted)" if head else "")
            )
        creating = base is None and (head is None or head.deleted)
        if not creating and (head is None or head.number != base):
            raise Conflict(shard, base, head)
        at = self._clock()
        # One writer (this thread, under the directory lock): max + 1 is never reused.
        (revision,) = self._conn.execute(
            "SELECT coalesce(max(revision), 0) + 1 FROM versions"
        ).fetchone()
        number = 1 if head is None else head.number + 1
        # A tombstone keeps the deleted shard's owner: it says whose shard went.
        owner = owner if owner is not None else cast(Version, head).owner
        digest = content_hash(text)
        self._conn.execute(
            "INSERT OR IGNORE INTO texts (content_hash, text) VALUES (?, ?)", (digest, text)
        )
        self._conn.execute(
            "INSERT INTO versions (shard, number, revision, author, at, message, source, owner, content_hash, "
            "deleted) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                shard,
                number,
                revision,
                author,
                at.isoformat(),
                message,
                source,
                owner,
                digest,
                int(deleted),
            ),
        )
        self._conn.execute(
            "INSERT INTO heads (shard, number) VALUES (?, ?) "
            "ON CONFLICT (shard) DO UPDATE SET number = excluded.number",
            (shard, number),
        )
        return Version(shard, number, revision, author, at, message, source, owner, digest, deleted)

    def _record(self, kind: str, name: str) -> Record | None:
        row = self._conn.execute(f"SELECT {_RECORD} FROM records WHERE kind = ? AND name = ?",
                                 (kind, name)).fetchone()  # fmt: skip
        return None if row is None else _record(row)

    def _put_record(self, kind: str, name: str, data: str, base: int | None) -> Record:
        with _transaction(self._conn, "BEGIN IMMEDIATE"):
            current = self._record(kind, name)
            if (None if current is None else current.version) != base:
                raise RecordConflict(kind, name, base, current)
            record = Record(kind, name, 1 if current is None else current.version + 1, data, self._clock())
            self._conn.execute(
                "INSERT INTO records (kind, name, version, data, at) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (kind, name) DO UPDATE SET version = excluded.version, "
                "data = excluded.data, at = excluded.at",
                (kind, name, record.version, data, record.at.isoformat()),
            )
        return record

    def _delete_record(self, kind: str, name: str, base: int) -> None:
        with _transaction(self._conn, "BEGIN IMMEDIATE"):
            current = self._record(kind, name)
            if current is None or current.version != base:
                raise RecordConflict(kind, name, base, current)
            self._conn.execute("DELETE FROM records WHERE kind = ? AND name = ?", (kind, name))

    def _append_audit(self, row: tuple[Any, ...]) -> AuditEntry:
        with _transaction(self._conn, "BEGIN IMMEDIATE"):
            (entry_id,) = self._conn.execute(
                "INSERT INTO audit (at, actor, action, shard, base_version, new_version, accepted, reason) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                row,
            ).fetchone()
        return _audit((entry_id, *row))


def _check_limit(limit: int) -> None:
    if limit < 1:
        raise ValueError(f"limit must be 1 or more, not {limit}")


@contextlib.contextmanager
def _transaction(conn: sqlite3.Connection, begin: str) -> Iterator[None]:
    conn.execute(begin)
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _lock(data_dir: Path) -> int:
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(data_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise DataDirInUse(f"the data directory {data_dir} is in use by another process (pid {holder}); "
                           "stop it, or give this one its own --data-dir") from None  # fmt: skip
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    return fd


def _connect(path: Path) -> sqlite3.Connection:
    """Open the database on the store's thread (a connection stays on the thread that made it)."""
    # Created 0600 before SQLite opens it; SQLite gives its -wal and -shm files the same mode.
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
    os.chmod(path, 0o600)
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        (mode,) = conn.execute("PRAGMA journal_mode = WAL").fetchone()
        if mode != "wal":
            raise StoreError(
                f"config store {path}: SQLite could not use its WAL journal here (got {mode!r})"
            )
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("PRAGMA busy_timeout = 5000")
        (schema,) = conn.execute("PRAGMA user_version").fetchone()
        if schema == 0:
            # Statement by statement: executescript would commit half-way.
            with _transaction(conn, "BEGIN IMMEDIATE"):
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(_RECORDS)
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        elif schema == 1:
            with _transaction(conn, "BEGIN IMMEDIATE"):
                conn.execute(_RECORDS)
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        elif schema != SCHEMA_VERSION:
            raise StoreError(f"config store {path} has schema {schema}; this dgw reads schema {SCHEMA_VERSION} "
                             "(was it written by a newer dgw?)")  # fmt: skip
    except sqlite3.DatabaseError as e:
        conn.close()
        raise StoreError(f"config store {path} cannot be opened: {e}") from e
    except BaseException:
        conn.close()
        raise
    return conn


def _version(row: tuple[Any, ...]) -> Version:
    shard, number, revision, author, at, message, source, owner, digest, deleted = row[:10]
    return Version(shard, number, revision, author, datetime.fromisoformat(at), message, source, owner, digest,
                   bool(deleted))  # fmt: skip


def _entry(row: tuple[Any, ...]) -> ShardVersion:
    return ShardVersion(_version(row), row[10])


def _record(row: tuple[Any, ...]) -> Record:
    kind, name, version, data, at = row
    return Record(kind, name, version, data, datetime.fromisoformat(at))


def _audit(row: tuple[Any, ...]) -> AuditEntry:
    entry_id, at, actor, action, shard, base, new, accepted, reason = row
    return AuditEntry(
        entry_id,
        datetime.fromisoformat(at),
        actor,
        action,
        shard,
        base,
        new,
        bool(accepted),
        reason,
    )
