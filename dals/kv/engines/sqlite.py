"""The embedded engine: one SQLite database file.

One connection, used by one thread: every query runs there, off the event loop, one at
a time (but the migration contract's bulk reads, ``export``, ``digest``, ``split`` and
``entries``, which run on a second, read-only connection in a thread of its own: WAL
lets them read a snapshot while writes go on, so a backfill or a verify does not queue
the DAL's own calls behind it), so each write's read-compare-write cannot interleave with another's (the
contract's "one record, one transaction", for every record at once). WAL journal;
``synchronous`` FULL by default (a returned write is fsynced). Rows are clustered by
(namespace, id, key) (``WITHOUT ROWID``): a record's items are one range of the table.
"""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from .base import (
    Batch,
    CommitOutcome,
    Copied,
    EngineError,
    Entry,
    KeyRange,
    Keys,
    Place,
    Selection,
    Span,
    StoredItem,
    Version,
    item_hash,
)

T = TypeVar("T")

# Each step takes the schema from the version before it to its own number; a database
# is brought to the last one when opened, in one transaction.
MIGRATIONS: tuple[tuple[int, str], ...] = (
    (1, """
CREATE TABLE items (
    namespace  TEXT    NOT NULL,
    id         TEXT    NOT NULL,
    key        BLOB    NOT NULL,
    value      BLOB,                       -- NULL: a tombstone, or a chunked value
    size       INTEGER NOT NULL,
    chunk_size INTEGER NOT NULL DEFAULT 0, -- > 0: the value is in chunks
    write_time INTEGER NOT NULL,
    writer     BLOB    NOT NULL,
    PRIMARY KEY (namespace, id, key)
) WITHOUT ROWID;
CREATE TABLE ranges (
    namespace  TEXT    NOT NULL,
    id         TEXT    NOT NULL,
    start_key  BLOB    NOT NULL,
    end_key    BLOB,
    write_time INTEGER NOT NULL,
    writer     BLOB    NOT NULL,
    PRIMARY KEY (namespace, id, start_key, write_time, writer)
) WITHOUT ROWID;
CREATE TABLE chunks (
    namespace  TEXT    NOT NULL,
    id         TEXT    NOT NULL,
    key        BLOB    NOT NULL,
    write_time INTEGER NOT NULL,
    writer     BLOB    NOT NULL,
    idx        INTEGER NOT NULL,
    data       BLOB    NOT NULL,
    staged_at  INTEGER NOT NULL,
    PRIMARY KEY (namespace, id, key, write_time, writer, idx)
) WITHOUT ROWID;
"""),
    # The purge finds old tombstones without reading every item.
    (2, "CREATE INDEX items_tombstones ON items (write_time) WHERE value IS NULL AND chunk_size = 0;"),
    # Commits that arrived before their last chunk (a shadow copy does not wait).
    (3, """
CREATE TABLE commits (
    namespace  TEXT    NOT NULL,
    id         TEXT    NOT NULL,
    key        BLOB    NOT NULL,
    write_time INTEGER NOT NULL,
    writer     BLOB    NOT NULL,
    count      INTEGER NOT NULL,
    total      INTEGER NOT NULL,
    PRIMARY KEY (namespace, id, key, write_time, writer)
) WITHOUT ROWID;
"""),
)
SCHEMA_VERSION = MIGRATIONS[-1][0]

_LIVE = "(value IS NOT NULL OR chunk_size > 0)"
_VERSION_OF = "namespace = ? AND id = ? AND key = ? AND write_time = ? AND writer = ?"
_ITEM = "key, value, size, chunk_size, write_time, writer"


def _item(row: tuple[Any, ...]) -> StoredItem:
    key, value, size, chunk_size, write_time, writer = row
    return StoredItem(key, Version(write_time, writer), size, value, chunk_size)


class SqliteEngine:
    name = "sqlite"

    def __init__(self, path: Path, synchronous: str = "FULL") -> None:
        self.path = path
        self._synchronous = synchronous
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kv-sqlite")
        self._db: sqlite3.Connection | None = None
        self._bulk_pool: ThreadPoolExecutor | None = None
        self._bulk: sqlite3.Connection | None = None

    @classmethod
    async def open(cls, path: Path, synchronous: str = "FULL") -> SqliteEngine:
        engine = cls(path, synchronous)
        try:
            await engine._run(engine._open)
        except BaseException:
            engine._pool.shutdown(wait=False)
            raise
        return engine

    # --- the one thread ------------------------------------------------------------

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._pool, fn, *args)
        except sqlite3.Error as e:
            raise EngineError(f"sqlite {self.path}: {e}") from None

    async def _run_bulk(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(connection, *args)`` on the read-only connection, in its own thread."""
        if self._bulk_pool is None:
            self._bulk_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kv-sqlite-bulk")
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._bulk_pool, self._in_bulk, fn, args)
        except sqlite3.Error as e:
            raise EngineError(f"sqlite {self.path}: {e}") from None

    def _in_bulk(self, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        if self._bulk is None:
            self._bulk = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, isolation_level=None)
        self._bulk.execute("BEGIN")  # one snapshot for the whole call
        try:
            return fn(self._bulk, *args)
        finally:
            self._bulk.execute("COMMIT")

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={self._synchronous}")
        db.execute("CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)")
        self._db = db
        with self._tx() as c:
            row = c.execute("SELECT value FROM meta WHERE name = 'schema_version'").fetchone()
            current = int(row[0]) if row else 0
            if current > SCHEMA_VERSION:
                raise EngineError(
                    f"sqlite {self.path}: schema version {current} is newer than this DAL "
                    f"knows ({SCHEMA_VERSION}); run a newer dals.kv"
                )
            for number, script in MIGRATIONS:
                if number > current:
                    for statement in filter(str.strip, script.split(";")):
                        c.execute(statement)
            c.execute(
                "INSERT OR REPLACE INTO meta (name, value) VALUES ('schema_version', ?)",
                (str(SCHEMA_VERSION),),
            )

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        assert self._db is not None
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # --- writes --------------------------------------------------------------------

    async def write(self, namespace: str, record_id: str, batch: Batch, version: Version) -> int:
        return await self._run(self._write, namespace, record_id, batch, version)

    def _write(self, ns: str, rid: str, batch: Batch, v: Version) -> int:
        applied = 0
        with self._tx() as c:
            for r in batch.ranges:
                c.execute("INSERT OR IGNORE INTO ranges VALUES (?, ?, ?, ?, ?, ?)",
                          (ns, rid, r.start, r.end, v.write_time_us, v.writer))  # fmt: skip
                where = ("namespace = ? AND id = ? AND key >= ? AND (? IS NULL OR key < ?) "
                         "AND (write_time, writer) < (?, ?)")  # fmt: skip
                args = (ns, rid, r.start, r.end, r.end, v.write_time_us, v.writer)
                for key, chunk_size, wt, wr, live in c.execute(
                    f"SELECT key, chunk_size, write_time, writer, {_LIVE} FROM items WHERE {where}", args
                ).fetchall():
                    if chunk_size:
                        self._drop_chunks(c, ns, rid, key, Version(wt, wr))
                    applied += live
                c.execute(f"DELETE FROM items WHERE {where}", args)
            if not batch.items:
                return applied
            newer = [KeyRange(s, e) for s, e in c.execute(
                "SELECT start_key, end_key FROM ranges WHERE namespace = ? AND id = ? "
                "AND (write_time, writer) > (?, ?)", (ns, rid, v.write_time_us, v.writer))]  # fmt: skip
            for key, value in batch.items:
                if any(key in r for r in newer):
                    continue
                row = c.execute(
                    "SELECT write_time, writer, chunk_size FROM items WHERE namespace = ? AND id = ? AND key = ?",
                    (ns, rid, key),
                ).fetchone()
                if row is not None:
                    if Version(row[0], row[1]) >= v:
                        continue
                    if row[2]:
                        self._drop_chunks(c, ns, rid, key, Version(row[0], row[1]))
                c.execute(
                    "INSERT OR REPLACE INTO items VALUES (?, ?, ?, ?, ?, 0, ?, ?)",
                    (ns, rid, key, value, len(value) if value is not None else 0, v.write_time_us, v.writer),
                )
                applied += 1
        return applied

    @staticmethod
    def _drop_chunks(c: sqlite3.Connection, ns: str, rid: str, key: bytes, v: Version) -> None:
        c.execute("DELETE FROM chunks WHERE namespace = ? AND id = ? AND key = ? AND write_time = ? AND writer = ?",
                  (ns, rid, key, v.write_time_us, v.writer))  # fmt: skip

    async def stage_chunks(
        self, namespace: str, record_id: str, key: bytes, version: Version,
        chunks: Sequence[tuple[int, bytes]], staged_at_us: int,
    ) -> CommitOutcome | None:  # fmt: skip
        rows = [(namespace, record_id, key, version.write_time_us, version.writer, i, data, staged_at_us)
                for i, data in chunks]  # fmt: skip
        return await self._run(self._stage, namespace, record_id, key, version, rows)

    def _stage(self, ns: str, rid: str, key: bytes, v: Version, rows: list[tuple[Any, ...]]) -> CommitOutcome | None:
        with self._tx() as c:
            c.executemany("INSERT OR REPLACE INTO chunks VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
            intent = c.execute(
                "SELECT count, total FROM commits WHERE namespace = ? AND id = ? AND key = ? AND write_time = ? "
                "AND writer = ?", (ns, rid, key, v.write_time_us, v.writer)).fetchone()  # fmt: skip
            if intent is None:
                return None
            outcome = self._commit_in(c, ns, rid, key, v, intent[0], intent[1])
        return None if outcome is CommitOutcome.INCOMPLETE else outcome

    async def commit_chunks(
        self, namespace: str, record_id: str, key: bytes, version: Version, count: int, total_size: int
    ) -> CommitOutcome:
        return await self._run(self._commit, namespace, record_id, key, version, count, total_size)

    def _commit(self, ns: str, rid: str, key: bytes, v: Version, count: int, total: int) -> CommitOutcome:
        with self._tx() as c:
            return self._commit_in(c, ns, rid, key, v, count, total)

    def _commit_in(
        self, c: sqlite3.Connection, ns: str, rid: str, key: bytes, v: Version, count: int, total: int
    ) -> CommitOutcome:
        pk = (ns, rid, key, v.write_time_us, v.writer)
        covered = c.execute(
            "SELECT 1 FROM ranges WHERE namespace = ? AND id = ? AND start_key <= ? "
            "AND (end_key IS NULL OR ? < end_key) AND (write_time, writer) > (?, ?) LIMIT 1",
            (ns, rid, key, key, v.write_time_us, v.writer),
        ).fetchone()
        row = c.execute(
            "SELECT write_time, writer, chunk_size FROM items WHERE namespace = ? AND id = ? AND key = ?",
            (ns, rid, key),
        ).fetchone()
        current = Version(row[0], row[1]) if row is not None else None
        if covered or (current is not None and current >= v):
            if current != v:
                self._drop_chunks(c, ns, rid, key, v)
            c.execute(f"DELETE FROM commits WHERE {_VERSION_OF}", pk)
            return CommitOutcome.SUPERSEDED
        sizes = c.execute(
            "SELECT idx, length(data) FROM chunks WHERE namespace = ? AND id = ? AND key = ? "
            "AND write_time = ? AND writer = ? ORDER BY idx",
            (ns, rid, key, v.write_time_us, v.writer),
        ).fetchall()
        if not _complete(sizes, count, total):
            c.execute("INSERT OR REPLACE INTO commits VALUES (?, ?, ?, ?, ?, ?, ?)", (*pk, count, total))
            return CommitOutcome.INCOMPLETE
        if row is not None and row[2]:
            self._drop_chunks(c, ns, rid, key, current)  # type: ignore[arg-type]
        c.execute("INSERT OR REPLACE INTO items VALUES (?, ?, ?, NULL, ?, ?, ?, ?)",
                  (ns, rid, key, total, sizes[0][1], v.write_time_us, v.writer))  # fmt: skip
        c.execute(f"DELETE FROM commits WHERE {_VERSION_OF}", pk)
        return CommitOutcome.APPLIED

    # --- reads ---------------------------------------------------------------------

    async def read_items(
        self, namespace: str, record_id: str, selection: Selection, after: bytes | None, limit: int
    ) -> list[StoredItem]:
        return await self._run(self._read_items, namespace, record_id, selection, after, limit)

    def _read_items(self, ns: str, rid: str, sel: Selection, after: bytes | None, limit: int) -> list[StoredItem]:
        assert self._db is not None
        base = f"SELECT {_ITEM} FROM items WHERE namespace = ? AND id = ? AND {_LIVE}"
        if isinstance(sel, Keys):
            keys = [k for k in sel.keys if after is None or k > after]
            if not keys:
                return []
            marks = ",".join("?" * len(keys))
            rows = self._db.execute(f"{base} AND key IN ({marks}) ORDER BY key LIMIT ?", (ns, rid, *keys, limit))
        else:
            low = sel.start if after is None or after < sel.start else after
            op = ">=" if after is None or after < sel.start else ">"
            rows = self._db.execute(
                f"{base} AND key {op} ? AND (? IS NULL OR key < ?) ORDER BY key LIMIT ?",
                (ns, rid, low, sel.end, sel.end, limit),
            )
        return [_item(r) for r in rows]

    async def read_chunks(
        self, namespace: str, record_id: str, key: bytes, version: Version, first: int, last: int
    ) -> list[bytes] | None:
        return await self._run(self._read_chunks, namespace, record_id, key, version, first, last)

    def _read_chunks(self, ns: str, rid: str, key: bytes, v: Version, first: int, last: int) -> list[bytes] | None:
        assert self._db is not None
        self._db.execute("BEGIN")  # one snapshot for the check and the chunks
        try:
            current = self._db.execute(
                "SELECT 1 FROM items WHERE namespace = ? AND id = ? AND key = ? AND write_time = ? "
                "AND writer = ? AND chunk_size > 0", (ns, rid, key, v.write_time_us, v.writer)).fetchone()  # fmt: skip
            if current is None:
                return None
            rows = self._db.execute(
                "SELECT data FROM chunks WHERE namespace = ? AND id = ? AND key = ? AND write_time = ? "
                "AND writer = ? AND idx BETWEEN ? AND ? ORDER BY idx",
                (ns, rid, key, v.write_time_us, v.writer, first, last),
            ).fetchall()
        finally:
            self._db.execute("COMMIT")
        return [r[0] for r in rows] if len(rows) == last - first + 1 else None

    async def scan(self, namespace: str, after: tuple[str, bytes] | None, limit: int) -> list[tuple[str, StoredItem]]:
        return await self._run(self._scan, namespace, after, limit)

    def _scan(self, ns: str, after: tuple[str, bytes] | None, limit: int) -> list[tuple[str, StoredItem]]:
        assert self._db is not None
        query = f"SELECT id, {_ITEM} FROM items WHERE namespace = ? AND {_LIVE}"
        if after is None:
            rows = self._db.execute(f"{query} ORDER BY id, key LIMIT ?", (ns, limit))
        else:
            rows = self._db.execute(f"{query} AND (id, key) > (?, ?) ORDER BY id, key LIMIT ?", (ns, *after, limit))
        return [(r[0], _item(r[1:])) for r in rows]

    # --- migration ----------------------------------------------------------------

    async def export(self, namespace: str, after: Place | None, span: Span, limit: int) -> list[tuple[str, StoredItem]]:
        return await self._run_bulk(_export, namespace, after, span, limit)

    async def import_items(self, namespace: str, items: Sequence[Copied], repair: bool) -> int:
        return await self._run(self._import, namespace, items, repair) if items else 0

    def _import(self, ns: str, items: Sequence[Copied], repair: bool) -> int:
        """Per record, its range tombstones and its chunked items first (few); then every
        item in one upsert that applies only over an older version."""
        rows = []
        with self._tx() as c:
            newer: dict[str, list[tuple[KeyRange, Version]]] = {}
            chunked: dict[tuple[str, bytes], Version] = {}
            for rid in {i.record_id for i in items}:
                newer[rid] = [(KeyRange(s, e), Version(t, w)) for s, e, t, w in c.execute(
                    "SELECT start_key, end_key, write_time, writer FROM ranges WHERE namespace = ? AND id = ?",
                    (ns, rid))]  # fmt: skip
                for key, wt, wr in c.execute(
                    "SELECT key, write_time, writer FROM items WHERE namespace = ? AND id = ? AND chunk_size > 0",
                    (ns, rid),
                ):
                    chunked[(rid, key)] = Version(wt, wr)
            for item in items:
                v = item.version
                if newer[item.record_id] and any(item.key in r and rv > v for r, rv in newer[item.record_id]):
                    continue
                current = chunked.get((item.record_id, item.key))
                if current is not None:
                    if current > v or (current == v and not repair):
                        continue
                    self._drop_chunks(c, ns, item.record_id, item.key, current)
                value = item.value
                rows.append((ns, item.record_id, item.key, value, len(value) if value is not None else 0,
                             v.write_time_us, v.writer))  # fmt: skip
            before = c.total_changes
            c.executemany(
                "INSERT INTO items VALUES (?, ?, ?, ?, ?, 0, ?, ?) ON CONFLICT (namespace, id, key) DO UPDATE SET "
                "value = excluded.value, size = excluded.size, chunk_size = 0, write_time = excluded.write_time, "
                "writer = excluded.writer WHERE (items.write_time, items.writer) < (excluded.write_time, "
                f"excluded.writer){' OR (items.write_time, items.writer) = (excluded.write_time, excluded.writer)' if repair else ''}",
                rows)  # fmt: skip
            applied = c.total_changes - before
        return applied

    async def digest(self, namespace: str, spans: Sequence[Span], count_only: bool = False) -> list[tuple[int, bytes]]:
        return await self._run_bulk(_digest, namespace, spans, count_only)

    async def split(self, namespace: str, span: Span, parts: int) -> list[Place]:
        return await self._run_bulk(_split, namespace, span, parts)

    async def entries(self, namespace: str, span: Span, limit: int) -> list[Entry]:
        return await self._run_bulk(_entries, namespace, span, limit)

    # --- upkeep --------------------------------------------------------------------

    async def purge(self, tombstones_before_us: int, staged_before_us: int) -> int:
        return await self._run(self._purge, tombstones_before_us, staged_before_us)

    def _purge(self, tombstones_before: int, staged_before: int) -> int:
        with self._tx() as c:
            n = c.execute("DELETE FROM items WHERE value IS NULL AND chunk_size = 0 AND write_time < ?",
                          (tombstones_before,)).rowcount  # fmt: skip
            n += c.execute("DELETE FROM ranges WHERE write_time < ?", (tombstones_before,)).rowcount
            n += c.execute(
                "DELETE FROM chunks WHERE staged_at < ? AND NOT EXISTS (SELECT 1 FROM items i WHERE "
                "i.namespace = chunks.namespace AND i.id = chunks.id AND i.key = chunks.key AND "
                "i.write_time = chunks.write_time AND i.writer = chunks.writer AND i.chunk_size > 0)",
                (staged_before,),
            ).rowcount
            c.execute("DELETE FROM commits WHERE NOT EXISTS (SELECT 1 FROM chunks h WHERE h.namespace = "
                      "commits.namespace AND h.id = commits.id AND h.key = commits.key AND "
                      "h.write_time = commits.write_time AND h.writer = commits.writer)")  # fmt: skip
        return n

    async def close(self) -> None:
        if self._db is not None:
            db, self._db = self._db, None
            await asyncio.get_running_loop().run_in_executor(self._pool, db.close)
        self._pool.shutdown(wait=True)
        if self._bulk_pool is not None:
            if self._bulk is not None:
                bulk, self._bulk = self._bulk, None
                await asyncio.get_running_loop().run_in_executor(self._bulk_pool, bulk.close)
            self._bulk_pool.shutdown(wait=True)


def _complete(sizes: list[tuple[int, int]], count: int, total: int) -> bool:
    """Chunks 0..count-1 are all there, add up to ``total``, and every one but the last
    has the first one's size (so a reader finds byte N in chunk N // size)."""
    if count < 1 or [i for i, _ in sizes] != list(range(count)) or sum(n for _, n in sizes) != total:
        return False
    first = sizes[0][1]
    return all(n == first for _, n in sizes[:-1]) and sizes[-1][1] <= first


# --- the migration contract's reads, on the read-only connection ------------------------

def _where(span: Span, after: Place | None = None) -> tuple[str, list[Any]]:
    """The SQL condition (after ``namespace = ?``) and arguments for live items in
    ``span`` and after ``after``."""
    sql, args = f" AND {_LIVE}", []
    if after is not None and (span.start is None or after >= span.start):
        sql += " AND (id, key) > (?, ?)"
        args += list(after)
    elif span.start is not None:
        sql += " AND (id, key) >= (?, ?)"
        args += list(span.start)
    if span.end is not None:
        sql += " AND (id, key) < (?, ?)"
        args += list(span.end)
    return sql, args


def _export(db: sqlite3.Connection, ns: str, after: Place | None, span: Span, limit: int) -> list[tuple[str, StoredItem]]:
    where, args = _where(span, after)
    rows = db.execute(f"SELECT id, {_ITEM} FROM items WHERE namespace = ?{where} ORDER BY id, key LIMIT ?",
                      (ns, *args, limit))  # fmt: skip
    return [(r[0], _item(r[1:])) for r in rows]


def _hashed(db: sqlite3.Connection, ns: str, span: Span, limit: int | None) -> Iterator[Entry]:
    where, args = _where(span)
    sql = f"SELECT id, key, value, size, write_time, writer FROM items WHERE namespace = ?{where} ORDER BY id, key"
    if limit is not None:
        sql += f" LIMIT {int(limit)}"
    for rid, key, value, size, wt, wr in db.execute(sql, (ns, *args)):
        v = Version(wt, wr)
        if value is None:  # in chunks
            value = _chunked(db, ns, rid, key, wt, wr)
        yield Entry(rid, key, v, size, item_hash(rid, key, v, value))


def _digest(db: sqlite3.Connection, ns: str, spans: Sequence[Span], count_only: bool) -> list[tuple[int, bytes]]:
    """Streamed: each row hashed as it is read (a lean loop; the same ``item_hash``)."""
    out = []
    md5, from_bytes = hashlib.md5, int.from_bytes
    for span in spans:
        where, args = _where(span)
        if count_only:
            n = db.execute(f"SELECT count(*) FROM items WHERE namespace = ?{where}", (ns, *args)).fetchone()[0]
            out.append((n, b""))
            continue
        n = xor = 0
        rows = db.execute(f"SELECT id, key, value, write_time, writer FROM items WHERE namespace = ?{where}", (ns, *args))
        for rid, key, value, wt, wr in rows:
            if value is None:  # in chunks
                value = _chunked(db, ns, rid, key, wt, wr)
            xor ^= from_bytes(md5(rid.encode() + b"\0" + len(key).to_bytes(4, "big") + key
                                  + wt.to_bytes(8, "big", signed=True) + wr + value, usedforsecurity=False).digest(),
                              "big")  # fmt: skip
            n += 1
        out.append((n, xor.to_bytes(16, "big")))
    return out


def _chunked(db: sqlite3.Connection, ns: str, rid: str, key: bytes, wt: int, wr: bytes) -> bytes:
    return b"".join(r[0] for r in db.execute(
        "SELECT data FROM chunks WHERE namespace = ? AND id = ? AND key = ? AND write_time = ? AND writer = ? "
        "ORDER BY idx", (ns, rid, key, wt, wr)))  # fmt: skip


def _entries(db: sqlite3.Connection, ns: str, span: Span, limit: int) -> list[Entry]:
    return list(_hashed(db, ns, span, limit))


def _split(db: sqlite3.Connection, ns: str, span: Span, parts: int) -> list[Place]:
    """One pass over the positions in order (keys only: no value is read), keeping every
    k-th, k doubling whenever more than 4 × ``parts`` (at least 4096) are kept; the
    boundaries are picked from those, so parts differ by at most k items (none for a
    range of up to 4096)."""
    if parts < 2:
        return []
    where, args = _where(span)
    rows = db.execute(f"SELECT id, key FROM items WHERE namespace = ?{where} ORDER BY id, key", (ns, *args))
    kept: list[Place] = []
    every, count = 1, 0
    for rid, key in rows:
        if count % every == 0:
            kept.append((rid, key))
            if len(kept) == max(4 * parts, 4096):
                kept, every = kept[::2], every * 2
        count += 1
    out: list[Place] = []
    step = -(-count // parts)
    for i in range(1, parts):
        at = i * step // every
        if 0 < at < len(kept) and i * step < count and (not out or kept[at] > out[-1]):
            out.append(kept[at])
    return out
