"""Bearer tokens kept on disk: ``tokens.sqlite3`` in the server's data directory.

A ``TokenStore`` (``xds_server.security.tokens``) over SQLite. Every record is read
into memory when the store opens, and every change is written through (one
transaction, WAL, ``synchronous=FULL``) before the call returns: checking a token on
each HTTP request is a dictionary lookup that never waits on the disk, and the rare
write (create, revoke, spend a one-time token) is durable when it returns. One
process owns a data directory (the config store's lock), so the memory copy cannot
go stale behind another writer.

Only SHA-256 digests of the secrets are stored; the file is 0600 anyway, in the
0700 data directory, like the config store's database.
"""

from __future__ import annotations

import datetime as dt
import os
import sqlite3
from pathlib import Path
from typing import Any

from xds_server.security.tokens import ROLES, MemoryTokenStore, TokenRecord
from xds_server.store.base import StoreError

DB_NAME = "tokens.sqlite3"
_SCHEMA_VERSION = 2  # 2: client tokens' identity column
_SCHEMA = """
CREATE TABLE IF NOT EXISTS tokens (
    token_id      TEXT PRIMARY KEY,
    name          TEXT NOT NULL,
    role          TEXT NOT NULL,
    secret_sha256 TEXT NOT NULL,
    created_at    TEXT NOT NULL,
    shard         TEXT,
    expires_at    TEXT,
    one_time      INTEGER NOT NULL CHECK (one_time IN (0, 1)),
    used_at       TEXT,
    revoked       INTEGER NOT NULL CHECK (revoked IN (0, 1)),
    identity      TEXT
) WITHOUT ROWID
"""
_COLUMNS = ("token_id, name, role, secret_sha256, created_at, shard, expires_at, one_time, used_at, revoked, "
            "identity")


class TokenStoreError(StoreError):
    """The token database cannot be used; the message names the file."""


class SqliteTokenStore(MemoryTokenStore):
    """``TokenStore`` over one SQLite file: the records in memory (``MemoryTokenStore``),
    each change written through first. Open with ``SqliteTokenStore.open(data_dir)``."""

    def __init__(self, path: Path, conn: sqlite3.Connection, records: dict[str, TokenRecord]):
        super().__init__()
        self.path = path
        self._conn = conn
        self._records = records

    @classmethod
    def open(cls, data_dir: Path) -> SqliteTokenStore:
        data_dir = Path(data_dir)
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = data_dir / DB_NAME
        # Created 0600 before SQLite opens it; its -wal and -shm files take the same mode.
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
        os.chmod(path, 0o600)
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA busy_timeout = 5000")
            (schema,) = conn.execute("PRAGMA user_version").fetchone()
            if schema not in (0, 1, _SCHEMA_VERSION):
                raise TokenStoreError(f"token store {path} has schema {schema}; this dgw reads "
                                      f"schema {_SCHEMA_VERSION} (was it written by a newer dgw?)")  # fmt: skip
            conn.execute(_SCHEMA)
            if schema == 1:  # its tokens stay; client tokens need the identity column
                conn.execute("ALTER TABLE tokens ADD COLUMN identity TEXT")
            conn.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")
            rows = conn.execute(f"SELECT {_COLUMNS} FROM tokens").fetchall()
            records = {r.token_id: r for r in map(_record, rows)}
        except sqlite3.DatabaseError as e:
            conn.close()
            raise TokenStoreError(f"token store {path} cannot be opened: {e}") from e
        except BaseException:
            conn.close()
            raise
        return cls(path, conn, records)

    def close(self) -> None:
        self._conn.close()

    # --- TokenStore: written through, then kept in memory ---------------------------

    def add(self, record: TokenRecord) -> None:
        self._write(
            f"INSERT INTO tokens ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", _row(record)
        )
        super().add(record)

    def spend(self, token_id: str, now: dt.datetime) -> bool:
        record = self._records.get(token_id)
        if record is None or record.used_at is not None:
            return False
        self._write("UPDATE tokens SET used_at = ? WHERE token_id = ? AND used_at IS NULL",
                    (now.isoformat(), token_id))  # fmt: skip
        return super().spend(token_id, now)

    def revoke(self, token_id: str) -> bool:
        if token_id not in self._records:
            return False
        self._write("UPDATE tokens SET revoked = 1 WHERE token_id = ?", (token_id,))
        return super().revoke(token_id)

    def _write(self, sql: str, params: tuple[Any, ...]) -> None:
        try:
            with self._conn:
                self._conn.execute("BEGIN IMMEDIATE")
                self._conn.execute(sql, params)
        except sqlite3.Error as e:
            raise TokenStoreError(f"token store {self.path}: {e}") from e


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _time(value: str | None) -> dt.datetime | None:
    return dt.datetime.fromisoformat(value) if value is not None else None


def _row(r: TokenRecord) -> tuple[Any, ...]:
    return (r.token_id, r.name, r.role, r.secret_sha256, r.created_at.isoformat(), r.shard,
            _iso(r.expires_at), int(r.one_time), _iso(r.used_at), int(r.revoked), r.identity)  # fmt: skip


def _record(row: tuple[Any, ...]) -> TokenRecord:
    token_id, name, role, digest, created, shard, expires, one_time, used, revoked, identity = row
    if role not in ROLES:
        raise TokenStoreError(f"token {token_id} has an unknown role {role!r}")
    return TokenRecord(
        token_id=token_id,
        name=name,
        role=role,
        secret_sha256=digest,
        created_at=dt.datetime.fromisoformat(created),
        shard=shard,
        expires_at=_time(expires),
        one_time=bool(one_time),
        used_at=_time(used),
        revoked=bool(revoked),
        identity=identity,
    )
