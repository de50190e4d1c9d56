"""The PostgreSQL engine (asyncpg): the same tables as SQLite's, in a schema of its own.

Every write is one round trip: a server-side function (``kv_write``, ``kv_commit``)
takes the whole batch as arrays and runs as one transaction under an advisory lock on
the record, so concurrent writers to one record are serialized (a range delete and a
put cannot slip past each other) while different records write in parallel. Reads are
single statements (one snapshot each). Ids are ``COLLATE "C"``: records sort by their
UTF-8 bytes, as on SQLite.

The DAL creates its schema and brings it to the current version when it opens it,
under a session advisory lock (several DAL instances may start at once); a schema
newer than this code is refused.
"""

from __future__ import annotations

import asyncio
import collections
import re
from collections.abc import Sequence
from typing import Any

import asyncpg

from .base import (
    Batch,
    CommitOutcome,
    Copied,
    Digest,
    EngineError,
    Entry,
    Keys,
    Place,
    Selection,
    Span,
    StoredItem,
    Version,
)

_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_ITEM = "key, value, size, chunk_size, write_time, writer"
BULK_TIMEOUT_S = 600.0
"""The migration contract's digests and splits read a whole namespace: past the
connections' 30 s command timeout on a large one."""
_LIVE = "(value IS NOT NULL OR chunk_size > 0)"

# {s} is the schema. Each step takes it from the version before to its own number.
MIGRATIONS: tuple[tuple[int, str], ...] = (
    (1, """
CREATE TABLE {s}.items (
    namespace  text COLLATE "C" NOT NULL,
    id         text COLLATE "C" NOT NULL,
    key        bytea  NOT NULL,
    value      bytea,                       -- NULL: a tombstone, or a chunked value
    size       bigint NOT NULL,
    chunk_size integer NOT NULL DEFAULT 0,  -- > 0: the value is in chunks
    write_time bigint NOT NULL,
    writer     bytea  NOT NULL,
    PRIMARY KEY (namespace, id, key)
);
CREATE TABLE {s}.ranges (
    namespace  text COLLATE "C" NOT NULL,
    id         text COLLATE "C" NOT NULL,
    start_key  bytea  NOT NULL,
    end_key    bytea,
    write_time bigint NOT NULL,
    writer     bytea  NOT NULL,
    PRIMARY KEY (namespace, id, start_key, write_time, writer)
);
CREATE TABLE {s}.chunks (
    namespace  text COLLATE "C" NOT NULL,
    id         text COLLATE "C" NOT NULL,
    key        bytea   NOT NULL,
    write_time bigint  NOT NULL,
    writer     bytea   NOT NULL,
    idx        integer NOT NULL,
    data       bytea   NOT NULL,
    staged_at  bigint  NOT NULL,
    PRIMARY KEY (namespace, id, key, write_time, writer, idx)
);
"""),
    # The purge finds old tombstones without reading every item.
    (2, "CREATE INDEX items_tombstones ON {s}.items (write_time) WHERE value IS NULL AND chunk_size = 0;"),
    # Commits that arrived before their last chunk (a shadow copy does not wait).
    (3, """
CREATE TABLE {s}.commits (
    namespace  text COLLATE "C" NOT NULL,
    id         text COLLATE "C" NOT NULL,
    key        bytea   NOT NULL,
    write_time bigint  NOT NULL,
    writer     bytea   NOT NULL,
    count      integer NOT NULL,
    total      bigint  NOT NULL,
    PRIMARY KEY (namespace, id, key, write_time, writer)
);
"""),
)
SCHEMA_VERSION = MIGRATIONS[-1][0]

# Replaced on every open (under the migration lock): the functions follow the code.
_FUNCTIONS = """
CREATE OR REPLACE FUNCTION {s}.kv_lock(p_ns text, p_id text) RETURNS void LANGUAGE sql AS $$
    SELECT pg_advisory_xact_lock(hashtextextended(p_ns || '/' || p_id, {seed}))
$$;

CREATE OR REPLACE FUNCTION {s}.kv_write(
    p_ns text, p_id text, p_wt bigint, p_wr bytea,
    p_starts bytea[], p_ends bytea[], p_keys bytea[], p_values bytea[], p_deletes boolean[]
) RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    applied integer := 0;
    n integer;
BEGIN
    PERFORM {s}.kv_lock(p_ns, p_id);
    IF cardinality(p_starts) > 0 THEN
        INSERT INTO {s}.ranges (namespace, id, start_key, end_key, write_time, writer)
            SELECT p_ns, p_id, r.s, r.e, p_wt, p_wr FROM unnest(p_starts, p_ends) AS r(s, e)
            ON CONFLICT DO NOTHING;
        WITH gone AS (
            DELETE FROM {s}.items i USING unnest(p_starts, p_ends) AS r(s, e)
            WHERE i.namespace = p_ns AND i.id = p_id AND i.key >= r.s AND (r.e IS NULL OR i.key < r.e)
              AND (i.write_time, i.writer) < (p_wt, p_wr)
            RETURNING i.key, i.write_time, i.writer, i.chunk_size, (i.value IS NOT NULL OR i.chunk_size > 0) AS live
        ), dropped AS (
            DELETE FROM {s}.chunks c USING gone g
            WHERE g.chunk_size > 0 AND c.namespace = p_ns AND c.id = p_id AND c.key = g.key
              AND c.write_time = g.write_time AND c.writer = g.writer
        )
        SELECT count(*) FILTER (WHERE live) INTO n FROM gone;
        applied := applied + n;
    END IF;
    IF cardinality(p_keys) > 0 THEN
        WITH input AS (
            SELECT u.k, u.v, u.d FROM unnest(p_keys, p_values, p_deletes) AS u(k, v, d)
            WHERE NOT EXISTS (
                SELECT 1 FROM {s}.ranges r WHERE r.namespace = p_ns AND r.id = p_id
                  AND r.start_key <= u.k AND (r.end_key IS NULL OR u.k < r.end_key)
                  AND (r.write_time, r.writer) > (p_wt, p_wr))
        ), replaced AS (
            SELECT i.key, i.write_time, i.writer FROM {s}.items i JOIN input ON i.key = input.k
            WHERE i.namespace = p_ns AND i.id = p_id AND i.chunk_size > 0
              AND (i.write_time, i.writer) < (p_wt, p_wr)
        ), dropped AS (
            DELETE FROM {s}.chunks c USING replaced o
            WHERE c.namespace = p_ns AND c.id = p_id AND c.key = o.key
              AND c.write_time = o.write_time AND c.writer = o.writer
        ), up AS (
            INSERT INTO {s}.items AS i (namespace, id, key, value, size, chunk_size, write_time, writer)
                SELECT p_ns, p_id, k, CASE WHEN d THEN NULL ELSE v END,
                       CASE WHEN d THEN 0 ELSE length(v) END, 0, p_wt, p_wr FROM input
            ON CONFLICT (namespace, id, key) DO UPDATE SET
                value = EXCLUDED.value, size = EXCLUDED.size, chunk_size = 0,
                write_time = EXCLUDED.write_time, writer = EXCLUDED.writer
            WHERE (i.write_time, i.writer) < (EXCLUDED.write_time, EXCLUDED.writer)
            RETURNING 1
        )
        SELECT count(*) INTO n FROM up;
        applied := applied + n;
    END IF;
    RETURN applied;
END
$$;

-- Copied items (the migration contract's Import), many records in one transaction:
-- each record's lock first (in id order), then last writer wins per item as kv_write.
CREATE OR REPLACE FUNCTION {s}.kv_import(
    p_ns text, p_ids text[], p_keys bytea[], p_values bytea[], p_wts bigint[], p_wrs bytea[], p_repair boolean
) RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    n integer;
BEGIN
    PERFORM {s}.kv_lock(p_ns, d.id) FROM (SELECT DISTINCT u.id FROM unnest(p_ids) AS u(id) ORDER BY 1) d;
    WITH input AS (
        SELECT u.id, u.k, u.v, u.wt, u.wr FROM unnest(p_ids, p_keys, p_values, p_wts, p_wrs) AS u(id, k, v, wt, wr)
        WHERE NOT EXISTS (
            SELECT 1 FROM {s}.ranges r WHERE r.namespace = p_ns AND r.id = u.id
              AND r.start_key <= u.k AND (r.end_key IS NULL OR u.k < r.end_key)
              AND (r.write_time, r.writer) > (u.wt, u.wr))
    ), replaced AS (
        SELECT i.id, i.key, i.write_time, i.writer FROM {s}.items i JOIN input ON i.id = input.id AND i.key = input.k
        WHERE i.namespace = p_ns AND i.chunk_size > 0
          AND ((i.write_time, i.writer) < (input.wt, input.wr) OR (p_repair AND (i.write_time, i.writer) = (input.wt, input.wr)))
    ), dropped AS (
        DELETE FROM {s}.chunks c USING replaced o
        WHERE c.namespace = p_ns AND c.id = o.id AND c.key = o.key AND c.write_time = o.write_time AND c.writer = o.writer
    ), up AS (
        INSERT INTO {s}.items AS i (namespace, id, key, value, size, chunk_size, write_time, writer)
            SELECT p_ns, id, k, v, coalesce(length(v), 0), 0, wt, wr FROM input
        ON CONFLICT (namespace, id, key) DO UPDATE SET
            value = EXCLUDED.value, size = EXCLUDED.size, chunk_size = 0,
            write_time = EXCLUDED.write_time, writer = EXCLUDED.writer
        WHERE (i.write_time, i.writer) < (EXCLUDED.write_time, EXCLUDED.writer)
           OR (p_repair AND (i.write_time, i.writer) = (EXCLUDED.write_time, EXCLUDED.writer))
        RETURNING 1
    )
    SELECT count(*) INTO n FROM up;
    RETURN n;
END
$$;

CREATE OR REPLACE FUNCTION {s}.kv_commit(
    p_ns text, p_id text, p_key bytea, p_wt bigint, p_wr bytea, p_count integer, p_total bigint
) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    cur record;
    have boolean;
    st record;
BEGIN
    PERFORM {s}.kv_lock(p_ns, p_id);
    SELECT write_time, writer, chunk_size INTO cur FROM {s}.items
        WHERE namespace = p_ns AND id = p_id AND key = p_key;
    have := FOUND;
    IF EXISTS (SELECT 1 FROM {s}.ranges r WHERE r.namespace = p_ns AND r.id = p_id
               AND r.start_key <= p_key AND (r.end_key IS NULL OR p_key < r.end_key)
               AND (r.write_time, r.writer) > (p_wt, p_wr))
       OR (have AND (cur.write_time, cur.writer) >= (p_wt, p_wr)) THEN
        IF NOT have OR (cur.write_time, cur.writer) <> (p_wt, p_wr) THEN
            DELETE FROM {s}.chunks WHERE namespace = p_ns AND id = p_id AND key = p_key
                AND write_time = p_wt AND writer = p_wr;
        END IF;
        DELETE FROM {s}.commits WHERE namespace = p_ns AND id = p_id AND key = p_key
            AND write_time = p_wt AND writer = p_wr;
        RETURN 'superseded';
    END IF;
    SELECT count(*) AS n, coalesce(sum(length(data)), 0) AS total, min(idx) AS lo, max(idx) AS hi,
           count(DISTINCT length(data)) FILTER (WHERE idx < p_count - 1) AS sizes,
           max(length(data)) FILTER (WHERE idx = 0) AS first,
           max(length(data)) FILTER (WHERE idx = p_count - 1) AS last
        INTO st FROM {s}.chunks
        WHERE namespace = p_ns AND id = p_id AND key = p_key AND write_time = p_wt AND writer = p_wr;
    IF p_count < 1 OR st.n <> p_count OR st.lo <> 0 OR st.hi <> p_count - 1 OR st.total <> p_total
       OR st.sizes > 1 OR st.last > st.first THEN
        INSERT INTO {s}.commits VALUES (p_ns, p_id, p_key, p_wt, p_wr, p_count, p_total)
            ON CONFLICT (namespace, id, key, write_time, writer) DO UPDATE SET
                count = EXCLUDED.count, total = EXCLUDED.total;
        RETURN 'incomplete';
    END IF;
    IF have AND cur.chunk_size > 0 THEN
        DELETE FROM {s}.chunks WHERE namespace = p_ns AND id = p_id AND key = p_key
            AND write_time = cur.write_time AND writer = cur.writer;
    END IF;
    INSERT INTO {s}.items AS i (namespace, id, key, value, size, chunk_size, write_time, writer)
        VALUES (p_ns, p_id, p_key, NULL, p_total, st.first, p_wt, p_wr)
    ON CONFLICT (namespace, id, key) DO UPDATE SET
        value = NULL, size = EXCLUDED.size, chunk_size = EXCLUDED.chunk_size,
        write_time = EXCLUDED.write_time, writer = EXCLUDED.writer;
    DELETE FROM {s}.commits WHERE namespace = p_ns AND id = p_id AND key = p_key
        AND write_time = p_wt AND writer = p_wr;
    RETURN 'applied';
END
$$;

CREATE OR REPLACE FUNCTION {s}.kv_stage(
    p_ns text, p_id text, p_key bytea, p_wt bigint, p_wr bytea, p_idx integer[], p_data bytea[], p_at bigint
) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    intent record;
BEGIN
    PERFORM {s}.kv_lock(p_ns, p_id);
    INSERT INTO {s}.chunks SELECT p_ns, p_id, p_key, p_wt, p_wr, c.i, c.d, p_at
        FROM unnest(p_idx, p_data) AS c(i, d)
        ON CONFLICT (namespace, id, key, write_time, writer, idx) DO UPDATE SET
            data = EXCLUDED.data, staged_at = EXCLUDED.staged_at;
    SELECT count, total INTO intent FROM {s}.commits
        WHERE namespace = p_ns AND id = p_id AND key = p_key AND write_time = p_wt AND writer = p_wr;
    IF NOT FOUND THEN
        RETURN 'staged';
    END IF;
    RETURN {s}.kv_commit(p_ns, p_id, p_key, p_wt, p_wr, intent.count, intent.total);
END
$$;
"""


def _item(row: asyncpg.Record) -> StoredItem:
    return StoredItem(row[0], Version(row[4], row[5]), row[2], row[1], row[3])


class PostgresEngine:
    name = "postgres"

    def __init__(self, connections: _Connections, schema: str) -> None:
        self._connections = connections
        self.schema = schema
        s = schema
        self._sql = {
            "write": f"SELECT {s}.kv_write($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            "commit": f"SELECT {s}.kv_commit($1, $2, $3, $4, $5, $6, $7)",
            "stage": f"SELECT {s}.kv_stage($1, $2, $3, $4, $5, $6, $7, $8)",
            "range": f"SELECT {_ITEM} FROM {s}.items WHERE namespace = $1 AND id = $2 AND {_LIVE} "
                     f"AND key >= $3 AND ($4::bytea IS NULL OR key < $4) AND ($5::bytea IS NULL OR key > $5) "
                     f"ORDER BY key LIMIT $6",
            "keys": f"SELECT {_ITEM} FROM {s}.items WHERE namespace = $1 AND id = $2 AND {_LIVE} "
                    f"AND key = ANY($3::bytea[]) ORDER BY key LIMIT $4",
            "chunks": f"SELECT c.data FROM {s}.chunks c WHERE c.namespace = $1 AND c.id = $2 AND c.key = $3 "
                      f"AND c.write_time = $4 AND c.writer = $5 AND c.idx BETWEEN $6 AND $7 AND EXISTS ("
                      f"SELECT 1 FROM {s}.items i WHERE i.namespace = $1 AND i.id = $2 AND i.key = $3 "
                      f"AND i.write_time = $4 AND i.writer = $5 AND i.chunk_size > 0) ORDER BY c.idx",
            "scan_first": f"SELECT id, {_ITEM} FROM {s}.items WHERE namespace = $1 AND {_LIVE} "
                          f"ORDER BY id, key LIMIT $2",
            "scan": f"SELECT id, {_ITEM} FROM {s}.items WHERE namespace = $1 AND {_LIVE} "
                    f"AND (id, key) > ($2::text COLLATE \"C\", $3::bytea) ORDER BY id, key LIMIT $4",
        }  # fmt: skip

    @classmethod
    async def open(cls, dsn: str, schema: str, pool_size: int = 4, timeout_s: float = 5.0) -> PostgresEngine:
        if not _SCHEMA_NAME.fullmatch(schema):
            raise EngineError(f"postgres schema {schema!r} must match {_SCHEMA_NAME.pattern}")
        connections = _Connections(dsn, pool_size, timeout_s)
        try:
            first = await connections.acquire()
        except (*_DATABASE_ERRORS, TimeoutError) as e:
            raise EngineError(f"postgres {_safe(dsn)}: cannot connect: {e}") from None
        connections.release(first)
        engine = cls(connections, schema)
        try:
            await engine._migrate()
        except BaseException:
            await connections.close()
            raise
        return engine

    async def _migrate(self) -> None:
        s = self.schema
        async with self._conn() as c:
            # A session lock, on a key of our own: one DAL at a time creates or upgrades.
            await c.execute("SELECT pg_advisory_lock(hashtextextended($1, 0))", f"dals.kv migrate {s}")
            try:
                async with c.transaction():
                    await c.execute(f"CREATE SCHEMA IF NOT EXISTS {s}")
                    await c.execute(f"CREATE TABLE IF NOT EXISTS {s}.meta (name text PRIMARY KEY, value text NOT NULL)")
                    row = await c.fetchval(f"SELECT value FROM {s}.meta WHERE name = 'schema_version'")
                    current = int(row) if row else 0
                    if current > SCHEMA_VERSION:
                        raise EngineError(f"postgres schema {s}: version {current} is newer than this DAL "
                                          f"knows ({SCHEMA_VERSION}); run a newer dals.kv")  # fmt: skip
                    for number, script in MIGRATIONS:
                        if number > current:
                            await c.execute(script.format(s=s))
                    seed = int.from_bytes(s.encode()[:7].ljust(7, b"\0"), "big")
                    await c.execute(_FUNCTIONS.replace("{s}", s).replace("{seed}", str(seed)))
                    await c.execute(
                        f"INSERT INTO {s}.meta VALUES ('schema_version', $1) "
                        "ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value", str(SCHEMA_VERSION))  # fmt: skip
            finally:
                await c.execute("SELECT pg_advisory_unlock(hashtextextended($1, 0))", f"dals.kv migrate {s}")

    def _conn(self) -> _Connection:
        return _Connection(self._connections)

    async def write(self, namespace: str, record_id: str, batch: Batch, version: Version) -> int:
        keys = [k for k, _ in batch.items]
        values = [v for _, v in batch.items]
        deletes = [v is None for _, v in batch.items]
        async with self._conn() as c:
            applied: int = await c.fetchval(
                self._sql["write"], namespace, record_id, version.write_time_us, version.writer,
                [r.start for r in batch.ranges], [r.end for r in batch.ranges], keys, values, deletes)  # fmt: skip
        return applied

    async def stage_chunks(
        self, namespace: str, record_id: str, key: bytes, version: Version,
        chunks: Sequence[tuple[int, bytes]], staged_at_us: int,
    ) -> CommitOutcome | None:  # fmt: skip
        async with self._conn() as c:
            outcome = await c.fetchval(self._sql["stage"], namespace, record_id, key, version.write_time_us,
                                       version.writer, [i for i, _ in chunks], [d for _, d in chunks], staged_at_us)  # fmt: skip
        return None if outcome in ("staged", "incomplete") else CommitOutcome(outcome)

    async def commit_chunks(
        self, namespace: str, record_id: str, key: bytes, version: Version, count: int, total_size: int
    ) -> CommitOutcome:
        async with self._conn() as c:
            outcome = await c.fetchval(self._sql["commit"], namespace, record_id, key, version.write_time_us,
                                       version.writer, count, total_size)  # fmt: skip
        return CommitOutcome(outcome)

    async def read_items(
        self, namespace: str, record_id: str, selection: Selection, after: bytes | None, limit: int
    ) -> list[StoredItem]:
        async with self._conn() as c:
            if isinstance(selection, Keys):
                keys = [k for k in selection.keys if after is None or k > after]
                if not keys:
                    return []
                rows = await c.fetch(self._sql["keys"], namespace, record_id, keys, limit)
            else:
                rows = await c.fetch(self._sql["range"], namespace, record_id, selection.start, selection.end,
                                     after, limit)  # fmt: skip
        return [_item(r) for r in rows]

    async def read_chunks(
        self, namespace: str, record_id: str, key: bytes, version: Version, first: int, last: int
    ) -> list[bytes] | None:
        async with self._conn() as c:
            rows = await c.fetch(self._sql["chunks"], namespace, record_id, key, version.write_time_us,
                                 version.writer, first, last)  # fmt: skip
        return [r[0] for r in rows] if len(rows) == last - first + 1 else None

    async def scan(self, namespace: str, after: tuple[str, bytes] | None, limit: int) -> list[tuple[str, StoredItem]]:
        async with self._conn() as c:
            if after is None:
                rows = await c.fetch(self._sql["scan_first"], namespace, limit)
            else:
                rows = await c.fetch(self._sql["scan"], namespace, after[0], after[1], limit)
        return [(r[0], _item(r[1:])) for r in rows]

    # --- migration ----------------------------------------------------------------

    async def export(self, namespace: str, after: Place | None, span: Span, limit: int) -> list[tuple[str, StoredItem]]:
        where, args = _where(span, after, 2)
        async with self._conn() as c:
            rows = await c.fetch(f"SELECT id, {_ITEM} FROM {self.schema}.items WHERE namespace = $1{where} "
                                 f"ORDER BY id, key LIMIT {int(limit)}", namespace, *args)  # fmt: skip
        return [(r[0], _item(r[1:])) for r in rows]

    async def import_items(self, namespace: str, items: Sequence[Copied], repair: bool) -> int:
        if not items:
            return 0
        async with self._conn() as c:
            applied: int = await c.fetchval(
                f"SELECT {self.schema}.kv_import($1, $2, $3, $4, $5, $6, $7)", namespace,
                [i.record_id for i in items], [i.key for i in items], [i.value for i in items],
                [i.version.write_time_us for i in items], [i.version.writer for i in items], repair)  # fmt: skip
        return applied

    def _hashed(self, where: str) -> str:
        """Each live item's ``item_hash`` (hex) in the items ``where`` selects."""
        s = self.schema
        return (f"SELECT id, key, write_time, writer, size, md5(convert_to(id, 'UTF8') || '\\x00'::bytea "
                f"|| int4send(length(key)) || key || int8send(write_time) || writer || coalesce(value, "
                f"(SELECT string_agg(h.data, ''::bytea ORDER BY h.idx) FROM {s}.chunks h WHERE h.namespace = "
                f"i.namespace AND h.id = i.id AND h.key = i.key AND h.write_time = i.write_time AND "
                f"h.writer = i.writer))) AS h FROM {s}.items i WHERE namespace = $1{where}")  # fmt: skip

    async def digest(self, namespace: str, spans: Sequence[Span], count_only: bool = False) -> list[tuple[int, bytes]]:
        # Inline values and values in chunks apart: the first query has no subquery per
        # row, so PostgreSQL may run it in parallel workers.
        s = self.schema
        out = []
        async with self._conn() as c:
            for span in spans:
                where, args = _where(span, None, 2)
                if count_only:
                    n = await c.fetchval(f"SELECT count(*) FROM {s}.items WHERE namespace = $1{where}",
                                         namespace, *args, timeout=BULK_TIMEOUT_S)  # fmt: skip
                    out.append((int(n), b""))
                    continue
                total = Digest()
                for part in (" AND value IS NOT NULL", " AND value IS NULL"):
                    row = await c.fetchrow(
                        "SELECT count(*), coalesce(bit_xor(('x' || h)::bit(128))::text, '0') FROM ("
                        + self._hashed(where + part) + ") t", namespace, *args, timeout=BULK_TIMEOUT_S)  # fmt: skip
                    total.merge(int(row[0]), int(row[1], 2))
                out.append(total.value())
        return out

    async def split(self, namespace: str, span: Span, parts: int) -> list[Place]:
        s = self.schema
        where, args = _where(span, None, 2)
        async with self._conn() as c:
            count = await c.fetchval(f"SELECT count(*) FROM {s}.items WHERE namespace = $1{where}", namespace, *args,
                                     timeout=BULK_TIMEOUT_S)  # fmt: skip
            if parts < 2 or count < 2:
                return []
            step = -(-count // parts)
            rows = await c.fetch(
                f"SELECT id, key FROM (SELECT id, key, row_number() OVER (ORDER BY id, key) AS n FROM {s}.items "
                f"WHERE namespace = $1{where}) t WHERE n > 1 AND (n - 1) % {int(step)} = 0 ORDER BY n "
                f"LIMIT {int(parts) - 1}", namespace, *args, timeout=BULK_TIMEOUT_S)  # fmt: skip
        return [(r[0], r[1]) for r in rows]

    async def entries(self, namespace: str, span: Span, limit: int) -> list[Entry]:
        where, args = _where(span, None, 2)
        async with self._conn() as c:
            rows = await c.fetch(self._hashed(where) + f" ORDER BY id, key LIMIT {int(limit)}", namespace, *args,
                                 timeout=BULK_TIMEOUT_S)  # fmt: skip
        return [Entry(r[0], r[1], Version(r[2], r[3]), r[4], bytes.fromhex(r[5])) for r in rows]

    async def purge(self, tombstones_before_us: int, staged_before_us: int) -> int:
        s = self.schema
        async with self._conn() as c, c.transaction():
            n = _count(await c.execute(
                f"DELETE FROM {s}.items WHERE value IS NULL AND chunk_size = 0 AND write_time < $1",
                tombstones_before_us))  # fmt: skip
            n += _count(await c.execute(f"DELETE FROM {s}.ranges WHERE write_time < $1", tombstones_before_us))
            n += _count(await c.execute(
                f"DELETE FROM {s}.chunks c WHERE staged_at < $1 AND NOT EXISTS (SELECT 1 FROM {s}.items i "
                "WHERE i.namespace = c.namespace AND i.id = c.id AND i.key = c.key AND "
                "i.write_time = c.write_time AND i.writer = c.writer AND i.chunk_size > 0)", staged_before_us))  # fmt: skip
            await c.execute(
                f"DELETE FROM {s}.commits m WHERE NOT EXISTS (SELECT 1 FROM {s}.chunks h WHERE h.namespace = "
                "m.namespace AND h.id = m.id AND h.key = m.key AND h.write_time = m.write_time AND h.writer = m.writer)")  # fmt: skip
        return n

    async def close(self) -> None:
        await self._connections.close()


_DATABASE_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError)


class _Connections:
    """The engine's connections: up to ``size``, opened when calls need them, each
    serving one call at a time, handed to waiting calls in turn.

    In place of asyncpg's pool, which on every call wraps the connection in a proxy,
    releases it through a task of its own (``asyncio.shield``) and then resets its
    session (one more round trip; nothing here leaves session state behind: advisory
    locks are per transaction, the migration's is released). A connection that closed
    or was left inside a transaction (a call cancelled mid-way) is dropped, and the next
    call that needs one opens a new one.
    """

    def __init__(self, dsn: str, size: int, timeout_s: float) -> None:
        self._dsn = dsn
        self._size = size
        self._timeout_s = timeout_s
        self._free: list[asyncpg.Connection] = []
        self._waiting: collections.deque[asyncio.Future[asyncpg.Connection | None]] = collections.deque()
        self._count = 0  # open, or being opened
        self._closed = False

    async def acquire(self) -> asyncpg.Connection:
        while True:
            while self._free:
                conn = self._free.pop()
                if not conn.is_closed():
                    return conn
                self._count -= 1
            if self._closed:
                raise EngineError("postgres: the engine is closed")
            if self._count < self._size:
                self._count += 1
                try:
                    return await self._connect()
                except BaseException:
                    self._count -= 1
                    self._hand(None)
                    raise
            waiter: asyncio.Future[asyncpg.Connection | None] = asyncio.get_running_loop().create_future()
            self._waiting.append(waiter)
            try:
                handed = await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    self._pass_on(waiter.result())
                raise
            if handed is not None:
                return handed  # else a place came free: open a connection in it

    def release(self, conn: asyncpg.Connection) -> None:
        if self._closed or conn.is_closed() or conn.is_in_transaction():
            self._count -= 1
            if not conn.is_closed():
                conn.terminate()
            self._hand(None)
        else:
            self._hand(conn)

    async def close(self) -> None:
        self._closed = True
        free, self._free = self._free, []
        for conn in free:
            await conn.close(timeout=self._timeout_s)
        while self._waiting:
            self._waiting.popleft().cancel()

    def _hand(self, conn: asyncpg.Connection | None) -> None:
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return
        if conn is not None:
            self._free.append(conn)

    def _pass_on(self, conn: asyncpg.Connection | None) -> None:
        """A connection handed to a call that was cancelled before it could take it."""
        if conn is None:
            self._hand(None)
        else:
            self.release(conn)

    async def _connect(self) -> asyncpg.Connection:
        conn: asyncpg.Connection = await asyncpg.connect(
            self._dsn, timeout=self._timeout_s, command_timeout=30,
            server_settings={"application_name": "dals.kv", "jit": "off"})  # fmt: skip
        return conn


class _Connection:
    """One of the engine's connections for one call; its database errors become EngineError."""

    __slots__ = ("_conn", "_connections")

    def __init__(self, connections: _Connections) -> None:
        self._connections = connections

    async def __aenter__(self) -> asyncpg.Connection:
        try:
            self._conn = await self._connections.acquire()
        except (*_DATABASE_ERRORS, TimeoutError) as e:
            raise EngineError(f"postgres: {e}") from None
        return self._conn

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: Any) -> bool:
        self._connections.release(self._conn)
        if isinstance(error, _DATABASE_ERRORS):
            raise EngineError(f"postgres: {error}") from None
        return False


def _where(span: Span, after: Place | None, first: int) -> tuple[str, list[Any]]:
    """The SQL condition (after ``namespace = $1``) and arguments, numbered from
    ``$first``, for live items in ``span`` and after ``after``. Each bound on (id, key)
    comes with the same bound on id alone: the planner estimates a row comparison's
    selectivity badly (a third of the table) and would scan the whole table for a small
    range; on id it reads the histogram, and the index scan follows."""
    sql, args = f" AND {_LIVE}", list[Any]()
    n = first

    def place(op: str, p: Place) -> None:
        nonlocal sql, n
        sql += (f' AND id {op[0]}= ${n}::text COLLATE "C"'
                f' AND (id, key) {op} (${n}::text COLLATE "C", ${n + 1}::bytea)')  # fmt: skip
        args.extend(p)
        n += 2

    if after is not None and (span.start is None or after >= span.start):
        place(">", after)
    elif span.start is not None:
        place(">=", span.start)
    if span.end is not None:
        place("<", span.end)
    return sql, args


def _count(status: str) -> int:
    """Rows of a command status like ``DELETE 3``."""
    return int(status.rsplit(" ", 1)[-1])


def _safe(dsn: str) -> str:
    """The DSN without its password, for messages."""
    return re.sub(r"(://[^:/@]*):[^@]*@", r"\1:***@", dsn)
