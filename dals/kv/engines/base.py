"""The storage engine contract: what an engine keeps and the operations it offers.

An engine stores, per namespace, records (a string id) of items (a byte key → a byte
value), and knows nothing of the API, tokens, limits, pages or caches: the service
(``dals/kv/service.py``) checks and shapes every call before an engine sees it.

What every engine guarantees (``tests/kv/test_engine_contract.py`` runs the same
suite against each):

- **Versions.** Every stored item carries the ``Version`` of the write that set it:
  (write time in µs, 16-byte writer id), ordered as a tuple. A write applies to an item
  only if its version is *newer* than the item's; an equal version is the same write
  again and changes nothing. So a retried, shadowed or backfilled write applies once,
  and of two writers the newer version wins whatever the order they arrive in.
- **Tombstones.** A deleted key keeps a tombstone (its row without a value, with the
  delete's version); a deleted range keeps a range tombstone (start, end, version) and
  the older items inside it are removed. A put whose version is older than a tombstone
  that covers its key does not apply. Tombstones older than the DAL's token window are
  purged (``purge``): no write can be older than that any more, except a backfill's
  copy of an item the source still holds.
- **One record, one transaction.** ``write`` applies a whole ``Batch`` (ranges first,
  then keys) atomically; concurrent writes to one record are serialized, so the
  outcome is the same as some order of the writes.
- **Chunks.** A value too large for one item is staged as numbered chunks under its
  version (``stage_chunks``), then ``commit_chunks`` makes them the item's value in one
  step if the version is newer (the chunks of the value it replaces are dropped with it)
  or drops them if it is not. A commit that finds chunks missing is kept as an intent,
  and the staging that completes the set applies it: a shadow (or any copy sent
  without waiting for answers) may deliver the commit before the last chunk. Staged
  chunks never committed are purged, with their intents. A reader that reads an item
  and then its chunks gets ``None`` if that version was replaced meanwhile.
- **Order.** Items come in key order (bytes, unsigned), records in id order (the UTF-8
  bytes of the id, i.e. code point order): the same order on every engine, so a scan
  is resumable anywhere and two engines can be compared record by record.
- **Durability.** A write that returned is on disk (or in the database's WAL).
- **Migration** (the DAL migration contract, ``dals/kv/migration.py``). ``export``
  reads live items over a span of (record id, key) positions; ``import_items`` applies
  copied items by last writer wins on their ORIGINAL versions, many records in one
  transaction (so a copy never overwrites a newer write, tombstones included, and a
  copy applied twice changes nothing); ``digest``, ``split`` and ``entries`` let two
  engines be compared without copying: the same items give the same ``item_hash`` and
  the same order-independent digest on every engine.
- **Errors.** An engine that cannot do an operation raises ``EngineError`` with a
  message for the operator (the service answers ``UNAVAILABLE``); nothing else.

A third engine is one module in this package that implements ``Engine`` and a config
class in ``dals/kv/config.py``.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

WRITER_ID_BYTES = 16


@dataclass(frozen=True, order=True)
class Version:
    """Which write set an item: its time (µs since the Unix epoch), then its writer id
    (the idempotency token's 16 random bytes), compared in that order."""

    write_time_us: int
    writer: bytes


@dataclass(frozen=True)
class KeyRange:
    """Keys from ``start`` (inclusive) to ``end`` (exclusive; None: to the last key)."""

    start: bytes = b""
    end: bytes | None = None

    def __contains__(self, key: object) -> bool:
        return isinstance(key, bytes) and key >= self.start and (self.end is None or key < self.end)


@dataclass(frozen=True)
class Keys:
    """Exactly these keys (sorted, unique)."""

    keys: tuple[bytes, ...]


Selection = KeyRange | Keys
"""Which items of a record a read wants: a range (all items: ``KeyRange()``) or keys."""


@dataclass(frozen=True)
class Batch:
    """One write to one record, normalized by the service: the ranges it deletes, then
    the keys it sets (a value) or deletes (None), each key once, sorted."""

    ranges: tuple[KeyRange, ...] = ()
    items: tuple[tuple[bytes, bytes | None], ...] = ()


@dataclass(frozen=True)
class StoredItem:
    """A live item as read: its value inline, or the shape of its chunks."""

    key: bytes
    version: Version
    size: int
    """The value's length in bytes."""
    value: bytes | None
    """The value, or None when it is stored in chunks (``read_chunks``)."""
    chunk_size: int = 0
    """Bytes per chunk (the last may be shorter); 0 for an inline value."""

    @property
    def chunks(self) -> int:
        return 0 if self.value is not None else -(-self.size // self.chunk_size)


Place = tuple[str, bytes]
"""A position in a namespace: (record id, item key)."""


@dataclass(frozen=True)
class Span:
    """Positions from ``start`` (inclusive; None: the first) to ``end`` (exclusive; None:
    past the last)."""

    start: Place | None = None
    end: Place | None = None


@dataclass(frozen=True)
class Copied:
    """An item copied from another engine: its value (None: a tombstone) and the version
    of the write that set it there."""

    record_id: str
    key: bytes
    value: bytes | None
    version: Version


@dataclass(frozen=True)
class Entry:
    """A live item as a comparison sees it."""

    record_id: str
    key: bytes
    version: Version
    size: int
    hash: bytes


def item_hash(record_id: str, key: bytes, version: Version, value: bytes) -> bytes:
    """What every engine hashes per item (md5 of the id, a NUL, the key's length (4 bytes)
    and the key, the write time (8 bytes, signed), the writer and the value)."""
    return hashlib.md5(
        record_id.encode() + b"\0" + len(key).to_bytes(4, "big") + key
        + version.write_time_us.to_bytes(8, "big", signed=True) + version.writer + value,
        usedforsecurity=False,
    ).digest()  # fmt: skip


class Digest:
    """Count and order-independent hash of items: the XOR of their ``item_hash`` (an
    item appears once in a namespace and its hash covers its position, so no two
    cancel but by a collision of md5)."""

    def __init__(self, count: int = 0, xor: int = 0) -> None:
        self.count, self.xor = count, xor

    def add(self, h: bytes) -> None:
        self.count += 1
        self.xor ^= int.from_bytes(h, "big")

    def merge(self, count: int, xor: int) -> None:
        self.count += count
        self.xor ^= xor

    def value(self) -> tuple[int, bytes]:
        return self.count, self.xor.to_bytes(16, "big")


class CommitOutcome(enum.Enum):
    APPLIED = "applied"
    """The chunks are the item's value now."""
    SUPERSEDED = "superseded"
    """The item holds a newer (or this same) version: the staged chunks were dropped."""
    INCOMPLETE = "incomplete"
    """Not every chunk 0..count-1 is staged, or their sizes do not add up to total_size
    (or differ where they must be equal): the chunks stay staged and the commit is kept
    as an intent, applied by the staging that completes them."""


class EngineError(Exception):
    """The engine cannot serve the operation now (database down, disk full...)."""


class Engine(Protocol):
    """What every storage engine offers. All operations are coroutines that never block
    the event loop."""

    name: str
    """The kind of engine, for logs: ``sqlite``, ``postgres``."""

    async def write(self, namespace: str, record_id: str, batch: Batch, version: Version) -> int:
        """Apply ``batch`` to the record at ``version``, atomically: first each range
        (a range tombstone; older items inside removed), then each key (set or
        tombstoned) whose stored version is older and that no newer range tombstone
        covers. Returns how many items took this version or were removed (0 when the
        write had already been applied, or every item holds a newer one)."""
        ...

    async def stage_chunks(
        self,
        namespace: str,
        record_id: str,
        key: bytes,
        version: Version,
        chunks: Sequence[tuple[int, bytes]],
        staged_at_us: int,
    ) -> CommitOutcome | None:
        """Keep (index, bytes) chunks of the value ``version`` will write to ``key``;
        staging a chunk again replaces it. Invisible to readers until committed. If a
        commit of this version came first and these chunks complete it, it is applied
        now: its outcome (APPLIED or SUPERSEDED); None otherwise."""
        ...

    async def commit_chunks(
        self, namespace: str, record_id: str, key: bytes, version: Version, count: int, total_size: int
    ) -> CommitOutcome:
        """Make the staged chunks 0..``count``-1 of ``version`` the item's value if the
        item (and any range tombstone over it) is older, as one step; see CommitOutcome.
        Every chunk but the last must have the first one's size."""
        ...

    async def read_items(
        self, namespace: str, record_id: str, selection: Selection, after: bytes | None, limit: int
    ) -> list[StoredItem]:
        """Up to ``limit`` live items of the record in key order, with keys after
        ``after`` (None: from the first) that ``selection`` selects."""
        ...

    async def read_chunks(
        self, namespace: str, record_id: str, key: bytes, version: Version, first: int, last: int
    ) -> list[bytes] | None:
        """Chunks ``first``..``last`` (inclusive) of the value ``version`` wrote to
        ``key``, or None if that value is not (or no longer) the item's."""
        ...

    async def scan(
        self, namespace: str, after: tuple[str, bytes] | None, limit: int
    ) -> list[tuple[str, StoredItem]]:
        """Up to ``limit`` live items of the namespace after position (record id, key)
        (None: from the first), in (id, key) order, each with its record id."""
        ...

    async def export(
        self, namespace: str, after: Place | None, span: Span, limit: int
    ) -> list[tuple[str, StoredItem]]:
        """Up to ``limit`` live items inside ``span`` and after ``after`` (None: from the
        span's start), in (id, key) order. Reads need not wait for writes."""
        ...

    async def import_items(self, namespace: str, items: Sequence[Copied], repair: bool) -> int:
        """Apply copied items (one per position), each as a write of its own version would,
        all in one transaction; with ``repair`` an item also replaces one of the same
        version. How many applied."""
        ...

    async def digest(self, namespace: str, spans: Sequence[Span], count_only: bool = False) -> list[tuple[int, bytes]]:
        """Per span: the count of live items and their ``Digest`` hash (b"" with
        ``count_only``)."""
        ...

    async def split(self, namespace: str, span: Span, parts: int) -> list[Place]:
        """Up to ``parts``-1 ascending positions inside ``span`` cutting it into parts of
        about equal item counts."""
        ...

    async def entries(self, namespace: str, span: Span, limit: int) -> list[Entry]:
        """Up to ``limit`` live items of ``span`` in order, with their ``item_hash``."""
        ...

    async def purge(self, tombstones_before_us: int, staged_before_us: int) -> int:
        """Drop tombstones (of keys and ranges) written before ``tombstones_before_us``
        and chunks staged before ``staged_before_us`` that no item uses; how many rows."""
        ...

    async def close(self) -> None:
        """Release connections and threads."""
        ...


def normalize(
    ops: Sequence[tuple[KeyRange, None] | tuple[bytes, bytes | None]],
) -> Batch:
    """The ``Batch`` a sequence of operations in order comes to: a range deletes what
    earlier operations of the same write set inside it; a later put or delete of a key
    wins over an earlier one. Ranges are applied before keys by every engine, which
    gives the same result as applying the operations in order."""
    ranges: list[KeyRange] = []
    items: dict[bytes, bytes | None] = {}
    for target, value in ops:
        if isinstance(target, KeyRange):
            ranges.append(target)
            for key in [k for k in items if k in target]:
                del items[key]
        else:
            items[target] = value
    return Batch(tuple(ranges), tuple(sorted(items.items())))
