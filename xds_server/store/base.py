"""The config store's contract: what a backend keeps and the operations it offers.

The store is dumb storage. It keeps each shard's YAML text exactly as written (runtime
config and deploy desires in one document) with its content hash, numbers every change,
and refuses a write whose base version is not the current one. It never parses or
validates: the caller validates and translates before it writes, so what is stored is
servable, and the caller enforces policy (a shard owned by files or by the API, never
both) by reading the head and writing with that head's number as the base — any change
in between makes the write a ``Conflict``.

Two counters, as in etcd:

- a shard's **version** (1, 2, 3, ...) numbers that shard's changes; it is what an
  operator sees, names in ``If-Match`` and rolls back to;
- the store's **revision** orders every change of every shard. ``list()`` says the
  revision it was read at, and ``watch(after_revision)`` yields every later change in
  order, so a reader that lists and then watches from that revision misses nothing,
  and one that reconnects resumes where it stopped.

Beside the shards, the store keeps **records**: small JSON documents of the platform's
own operational state (a running migration, a rollout, an artifact, a revocation), each
named by a kind and a name, numbered by its own version, and written with
compare-and-set on that version, like a shard. They are not versioned history: a record
holds only its current text.

SQLite (``xds_server.store.sqlite``) is the embedded backend; a distributed one (etcd,
a later issue) implements the same ``ConfigStore`` and passes the same contract tests
(``tests/store/test_contract.py``).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal, NamedTuple, Protocol

Source = Literal["api", "file", "rollback"]
"""Where a change came from: the operators' API, a file of the watched directory, or a
rollback (a new version carrying an old version's text)."""

SOURCES: tuple[Source, ...] = ("api", "file", "rollback")

API_OWNER = "api"
"""The owner of a shard written through the API; a file-owned shard's owner is
``file_owner(path)``."""


def file_owner(path: str) -> str:
    return f"file:{path}"


def content_hash(text: str) -> str:
    """The hash stored with a text: SHA-256 of its UTF-8 bytes, hex. A reader recomputes
    it to prove the text is whole."""
    return hashlib.sha256(text.encode()).hexdigest()


class Version(NamedTuple):
    """One numbered change of a shard, without its text (history lists these).

    A NamedTuple, not a frozen dataclass like the other values: history builds
    thousands at once, and a frozen dataclass's ``__init__`` is 4× slower (10,000 in
    34 ms instead of 8 ms) — most of the 50 ms a 10,000-version history may take."""

    shard: str
    number: int  # per shard: 1 for the first write, +1 for every later one (a delete too)
    revision: int  # store-wide order of this change: what `watch` resumes from
    author: str
    at: datetime  # when the store accepted it (UTC)
    message: str
    source: Source
    owner: str  # `api` or `file:<path>`: who may change the shard (the caller's policy)
    content_hash: str
    # A tombstone: the shard was deleted at this version (its text is empty). History
    # before it stays, and a later write re-creates the shard with the next number.
    deleted: bool


@dataclass(frozen=True)
class ShardVersion:
    """One version with its text, as written."""

    meta: Version
    text: str


@dataclass(frozen=True)
class Listing:
    """Every live shard's current version, read at one revision."""

    revision: int
    """Watch from here (``watch(after_revision=listing.revision)``) to miss nothing."""
    shards: tuple[ShardVersion, ...]
    """Sorted by shard name; deleted shards are left out."""


@dataclass(frozen=True)
class AuditEntry:
    """One mutation attempt, accepted or refused: who, what, when, and on which versions."""

    id: int
    at: datetime
    actor: str
    """Who asked: a token's name, ``file:<path>``, or ``anonymous``."""
    action: str
    """What was asked, e.g. ``put``, ``delete``, ``rollback``, ``wiring.promote``."""
    shard: str | None
    """None for an action on no shard (e.g. creating a token)."""
    base_version: int | None
    new_version: int | None
    """None when refused, or when the action makes no version."""
    accepted: bool
    reason: str
    """Why it was refused ("" when accepted)."""


@dataclass(frozen=True)
class Write:
    """One shard's part of ``put_many``: its text and the version it was made from
    (None: the shard must not exist, or be deleted)."""

    shard: str
    text: str
    base_version: int | None
    owner: str


@dataclass(frozen=True)
class Record:
    """One record: the platform's operational state under ``kind``/``name``."""

    kind: str
    name: str
    version: int
    """1 when created, +1 on every write: the base of the next compare-and-set."""
    data: str
    """JSON text, as written (the store does not parse it)."""
    at: datetime
    """When this version was written (UTC)."""


_RECORD_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:@-]{0,252}")


def check_record_key(kind: str, name: str) -> None:
    """Kinds and names are plain words (no '/', no control characters), so every backend
    can use them in a key path as they are."""
    for what, value in (("kind", kind), ("name", name)):
        if not _RECORD_PART.fullmatch(value):
            raise ValueError(f"a record {what} must match {_RECORD_PART.pattern}, not {value[:80]!r}")


class StoreError(Exception):
    """A store operation could not be done; the message says why and what to do."""


class Conflict(StoreError):
    """The base version named by a write is not the shard's current version.

    ``current`` is the shard's head (None when the shard never existed; a tombstone when
    it is deleted), so the caller can answer 409 with the version to re-read."""

    def __init__(self, shard: str, base_version: int | None, current: Version | None):
        self.shard = shard
        self.base_version = base_version
        self.current = current
        base = "a new shard" if base_version is None else f"base version {base_version}"
        if current is None:
            now = "the shard does not exist"
        elif current.deleted:
            now = f"the shard was deleted at version {current.number}"
        else:
            now = f"its current version is {current.number}"
        super().__init__(f"shard {shard!r} changed: the write was made from {base} but {now}; "
                         "read the shard again and retry from its current version")  # fmt: skip

    @property
    def current_version(self) -> int | None:
        """The base to retry from (None: the shard never existed)."""
        return None if self.current is None else self.current.number


class RecordConflict(StoreError):
    """The base version named by a record write is not the record's current one.

    ``current`` is the record as it is now (None: it does not exist), so the caller can
    re-read and decide again."""

    def __init__(self, kind: str, name: str, base_version: int | None, current: Record | None):
        self.kind, self.name, self.base_version, self.current = kind, name, base_version, current
        base = "a new record" if base_version is None else f"base version {base_version}"
        now = "it does not exist" if current is None else f"its current version is {current.version}"
        super().__init__(f"{kind} {name!r} changed: the write was made from {base} but {now}; "
                         "read it again and retry from its current version")  # fmt: skip


class NotFound(StoreError):
    """The shard, or the version of it asked for, does not exist."""


class DataDirInUse(StoreError):
    """Another process has this data directory open."""


class AuditLog(Protocol):
    """Where mutations, refusals and token operations are recorded (``ConfigStore``
    is one; the admin API's access control needs only this)."""

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
        """Record one mutation attempt. The store does not audit by itself: the caller
        knows who asked and what, and records refusals that never reach the store
        (no token, invalid config) the same way."""
        ...

    async def audit_log(
        self, *, limit: int = 100, before: int | None = None, shard: str | None = None
    ) -> tuple[AuditEntry, ...]:
        """Audit entries, newest first: at most ``limit``, ids below ``before`` when
        given, only the shard's when ``shard`` is given."""
        ...


class ConfigStore(AuditLog, Protocol):
    """What every backend offers. All operations are coroutines and never block the
    event loop; every acknowledged write survives a crash of the process."""

    async def get(self, shard: str) -> ShardVersion | None:
        """The shard's current version; None if it never existed or is deleted."""
        ...

    async def list(self) -> Listing:
        """Every live shard's current version, and the revision they were read at."""
        ...

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
        """Store ``text`` as the shard's next version, if ``base_version`` is its current
        version number (a tombstone's included). None creates: the shard must not exist
        or be deleted. Raises ``Conflict`` otherwise; returns the new version.

        Every call makes a version, even with unchanged text: a caller that wants no-op
        writes skipped compares ``content_hash(text)`` with the head's first. A write,
        once called, runs to its end even if the caller is cancelled meanwhile."""
        ...

    async def put_many(
        self, writes: Sequence[Write], *, author: str, message: str, source: Source
    ) -> tuple[Version, ...]:
        """``put`` of several shards as one transaction: every write is stored or none
        is (``Conflict`` names the first stale base). One version per write, in order."""
        ...

    async def delete(self, shard: str, *, base_version: int, author: str, message: str) -> Version:
        """Delete the shard with a tombstone version (history is kept), if
        ``base_version`` is its current version. The tombstone's source is ``api`` (a
        delete is always an explicit call) and its owner the deleted shard's. Raises
        ``NotFound`` if it does not exist (or is already deleted), ``Conflict`` on a
        stale base."""
        ...

    async def history(
        self, shard: str, *, limit: int = 100, before: int | None = None
    ) -> tuple[Version, ...]:
        """The shard's versions, newest first: at most ``limit``, each numbered below
        ``before`` when given (the next page starts before the last number returned).
        Empty for an unknown shard."""
        ...

    async def version(self, shard: str, number: int) -> ShardVersion | None:
        """One version of the shard with its text (a tombstone's text is empty)."""
        ...

    async def get_record(self, kind: str, name: str) -> Record | None:
        """The record, or None if there is none."""
        ...

    async def list_records(self, kind: str) -> tuple[Record, ...]:
        """Every record of ``kind``, sorted by name."""
        ...

    async def put_record(
        self, kind: str, name: str, data: str, *, base_version: int | None
    ) -> Record:
        """Write ``data`` as the record's next version if ``base_version`` is its current
        version (None: it must not exist). Raises ``RecordConflict`` otherwise. Like
        ``put``, a write once called runs to its end even if the caller is cancelled."""
        ...

    async def delete_record(self, kind: str, name: str, *, base_version: int) -> None:
        """Remove the record if ``base_version`` is its current version; raises
        ``RecordConflict`` otherwise (``current`` None: there was nothing to delete)."""
        ...

    def watch(self, after_revision: int = 0) -> AsyncIterator[ShardVersion]:
        """Every change with a revision above ``after_revision``, in revision order,
        then each new one as it is written, until the store is closed. A delete
        arrives as its tombstone (``meta.deleted``)."""
        ...

    async def close(self) -> None:
        """Release the backend; open watches end."""
        ...


async def rollback(
    store: ConfigStore,
    shard: str,
    to: int,
    *,
    base_version: int | None,
    author: str,
    owner: str,
    message: str = "",
) -> Version:
    """Store version ``to``'s text as a new version (source ``rollback``): history only
    grows, so a rollback can itself be rolled back. Raises ``NotFound`` if there is no
    such version or it is a tombstone, ``Conflict`` on a stale base."""
    target = await store.version(shard, to)
    if target is None:
        raise NotFound(
            f"shard {shard!r} has no version {to}; `dgw history {shard}` lists its versions"
        )
    if target.meta.deleted:
        raise NotFound(
            f"version {to} of shard {shard!r} is its deletion; roll back to a version before it"
        )
    return await store.put(
        shard,
        target.text,
        base_version=base_version,
        author=author,
        message=message or f"rollback to version {to}",
        source="rollback",
        owner=owner,
    )
