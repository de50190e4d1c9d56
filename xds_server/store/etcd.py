"""The distributed config store: the same ``ConfigStore`` over an etcd cluster, so
several xds_server replicas share one truth (``dgw server --store etcd://h1:2379,...``).

Keys, under a prefix (``/dgw/`` unless the URL names one; names are %-quoted):

- ``seq`` — the store's revision: the number of the last change (``Listing.revision``);
- ``head/<shard>`` — the shard's current version, as JSON metadata (no text);
- ``ver/<shard>/<number>`` — every version's metadata, for history (never rewritten);
- ``log/<revision>`` — every change in store order, what ``watch`` replays and follows;
- ``text/<sha256>`` — each distinct text once (a rollback stores no text again);
- ``audit-seq``, ``audit/<id>``, ``audit-shard/<shard>/<id>`` — the audit log, ids
  stored inverted so a plain ascending range reads newest first;
- ``rec/<kind>/<name>`` — records; a record's version is the key's own etcd version
  (1 when created, +1 on every write, back to 1 after a delete), compared by each write.

A write is one etcd transaction: it compares the shard's head *and* ``seq`` with what
was read (compare-and-set on the base revision) and puts head, version, log entry and
the new ``seq`` together, or nothing. The failure branch reads them back, so a write
that lost a race to another shard's write retries at once with the new ``seq``, and
one that lost to a write of the same shard is a ``Conflict``. Each write carries a
random id: after a timeout (the write may or may not have been applied) the next
attempt first reads the head, and finds its own id there if it was — an edit is never
applied twice, and never reported lost when it was stored.

Revisions are our own counter, not etcd's: a batch (``put_many``) is one etcd revision
but several changes, and a store that is empty lists at revision 0, as SQLite does.
``watch`` reads ``log/`` from the revision asked for, then follows it with an etcd
watch from the revision that read was made at. If that revision was compacted, or the
stream broke, it reads ``log/`` again from the last change it yielded: log keys are
never rewritten, so compaction never takes one away, and no change is skipped.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import json
import logging
import secrets
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import quote

from etcd_api import kv_pb2, rpc_pb2
from xds_server.store.base import (
    AuditEntry,
    Conflict,
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
from xds_server.store.etcd_client import (
    Compacted,
    EtcdClient,
    EtcdError,
    EtcdUnavailable,
    absent,
    delete,
    get,
    mod_is,
    parse_endpoints,
    prefix_end,
    put,
)

log = logging.getLogger("xds_server.store.etcd")

T = TypeVar("T")

# How long a write may keep trying (a leader election takes a second or two) before it
# is refused as "etcd unreachable".
WRITE_DEADLINE_S = 6.0
READ_DEADLINE_S = 3.0
_WATCH_BATCH = 256
_TEXT_CACHE = 512  # texts kept by hash (immutable, so never stale)
_AUDIT_IDS = 10**16  # ids are stored as _AUDIT_IDS - 1 - id: newest first in key order
_RETRY_S = 0.2  # first pause of a watch that lost its stream; doubles up to 2 s


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _name(name: str) -> str:
    return quote(name, safe="")


@dataclass(frozen=True)
class _Head:
    """A shard's head as read: its metadata and the etcd revision of the key (what a
    compare-and-set compares with; 0 when the shard never existed)."""

    meta: Version | None
    mod_revision: int
    write_id: str


class EtcdStore:
    """``ConfigStore`` over etcd. Open with ``await EtcdStore.open("etcd://h1:2379,...")``."""

    def __init__(self, client: EtcdClient, prefix: str, clock: Callable[[], datetime] = _utc_now):
        self.client = client
        self.prefix = prefix.encode()
        self.url = f"etcd://{','.join(client.endpoints)}{prefix.rstrip('/')}"
        self._clock = clock
        self._closed = False
        self._texts: OrderedDict[str, str] = OrderedDict()
        self._seq_key = self.prefix + b"seq"
        self._audit_seq_key = self.prefix + b"audit-seq"
        self._closing = asyncio.Event()
        # Why writes cannot be made now (a replica's session says etcd is unreachable):
        # they are refused at once with that reason instead of each waiting it out.
        self.refuse_writes: Callable[[], str | None] = lambda: None

    @classmethod
    async def open(cls, url: str, *, clock: Callable[[], datetime] = _utc_now,
                   timeout_s: float = 5.0) -> EtcdStore:  # fmt: skip
        """Connect and check that etcd answers (``StoreError`` naming the endpoints if
        none does within ``timeout_s``)."""
        endpoints, prefix = parse_endpoints(url)
        client = EtcdClient(endpoints)
        store = cls(client, prefix, clock)
        deadline = asyncio.get_running_loop().time() + timeout_s
        while True:
            try:
                await client.range(rpc_pb2.RangeRequest(key=store._seq_key))
                return store
            except EtcdError as e:
                if asyncio.get_running_loop().time() >= deadline:
                    await client.close()
                    raise StoreError(f"the config store at {url} is unreachable: {e}") from None
                await asyncio.sleep(0.2)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._closing.set()
        await self.client.close()

    # --- keys ------------------------------------------------------------------------

    def _head_key(self, shard: str) -> bytes:
        return self.prefix + b"head/" + _name(shard).encode()

    def _ver_key(self, shard: str, number: int) -> bytes:
        return self.prefix + f"ver/{_name(shard)}/{number:012d}".encode()

    def _log_key(self, revision: int) -> bytes:
        return self.prefix + f"log/{revision:016d}".encode()

    def _text_key(self, digest: str) -> bytes:
        return self.prefix + b"text/" + digest.encode()

    # --- reads -----------------------------------------------------------------------

    async def get(self, shard: str) -> ShardVersion | None:
        head = (await self._heads([shard]))[0]
        if head.meta is None or head.meta.deleted:
            return None
        return ShardVersion(head.meta, await self._text(head.meta.content_hash))

    async def list(self) -> Listing:
        heads = self.prefix + b"head/"
        response = await self._read(lambda: self.client.txn([], [get(self._seq_key), get(heads, prefix_end(heads))]))
        seq_kvs, head_kvs = (r.response_range.kvs for r in response.responses)
        revision = int(seq_kvs[0].value) if seq_kvs else 0
        metas = [meta for kv in head_kvs if not (meta := _meta(kv.value)[0]).deleted]
        texts = await self._texts_of([m.content_hash for m in metas])
        entries = sorted((ShardVersion(m, texts[m.content_hash]) for m in metas), key=lambda e: e.meta.shard)
        return Listing(revision, tuple(entries))

    async def history(self, shard: str, *, limit: int = 100, before: int | None = None) -> tuple[Version, ...]:
        if limit < 1:
            raise ValueError(f"limit must be 1 or more, not {limit}")
        head = (await self._heads([shard]))[0]
        if head.meta is None:
            return ()
        # Numbers run 1..head without gaps, so a page is one exact key range.
        top = head.meta.number if before is None else min(head.meta.number, before - 1)
        if top < 1:
            return ()
        bottom = max(1, top - limit + 1)
        response = await self._read(lambda: self.client.range(rpc_pb2.RangeRequest(
            key=self._ver_key(shard, bottom), range_end=self._ver_key(shard, top + 1))))  # fmt: skip
        return tuple(reversed([_meta(kv.value)[0] for kv in response.kvs]))

    async def version(self, shard: str, number: int) -> ShardVersion | None:
        response = await self._read(lambda: self.client.range(rpc_pb2.RangeRequest(key=self._ver_key(shard, number))))
        if not response.kvs:
            return None
        meta = _meta(response.kvs[0].value)[0]
        return ShardVersion(meta, await self._text(meta.content_hash))

    async def _heads(self, shards: Sequence[str]) -> builtins.list[_Head]:
        response = await self._read(lambda: self.client.txn([], [get(self._head_key(s)) for s in shards]))
        return [_head(r.response_range.kvs) for r in response.responses]

    async def _text(self, digest: str) -> str:
        return (await self._texts_of([digest]))[digest]

    async def _texts_of(self, digests: Sequence[str]) -> dict[str, str]:
        found = {d: self._texts[d] for d in digests if d in self._texts}
        missing = sorted({d for d in digests if d not in found})
        for start in range(0, len(missing), 100):
            chunk = missing[start:start + 100]
            ops = [get(self._text_key(d)) for d in chunk]
            response = await self._read(lambda ops=ops: self.client.txn([], ops))  # type: ignore[misc]
            for digest, r in zip(chunk, response.responses, strict=True):
                if not r.response_range.kvs:
                    raise StoreError(f"the config store at {self.url} has no text {digest} "
                                     "(its keys were changed by something else)")  # fmt: skip
                found[digest] = self._remember(digest, r.response_range.kvs[0].value.decode())
        return found

    def _remember(self, digest: str, text: str) -> str:
        self._texts[digest] = text
        self._texts.move_to_end(digest)
        while len(self._texts) > _TEXT_CACHE:
            self._texts.popitem(last=False)
        return text

    async def _read(self, call: Callable[[], Awaitable[T]]) -> T:
        """A read, tried again for a little while if no member answers (a leader
        election, members coming back); at once ``StoreError`` in an outage."""
        deadline = asyncio.get_running_loop().time() + READ_DEADLINE_S
        while True:
            if self._closed:
                raise StoreError(f"the config store at {self.url} is closed")
            try:
                return await call()
            except EtcdUnavailable as e:
                if self._closed or asyncio.get_running_loop().time() >= deadline or self.refuse_writes():
                    raise StoreError(f"the config store at {self.url} is unreachable: {e}") from None
            await asyncio.sleep(0.1)

    # --- watch -----------------------------------------------------------------------

    async def watch(self, after_revision: int = 0) -> AsyncIterator[ShardVersion]:
        revision = after_revision
        log_prefix = self.prefix + b"log/"
        pause = _RETRY_S
        while not self._closed:
            try:
                # Catch up from our own log, then follow it from the revision read at.
                while True:
                    request = rpc_pb2.RangeRequest(key=self._log_key(revision + 1),
                                                   range_end=prefix_end(log_prefix), limit=_WATCH_BATCH)
                    response = await self._read(lambda r=request: self.client.range(r))  # type: ignore[misc]
                    for entry in await self._entries([kv.value for kv in response.kvs]):
                        revision = entry.meta.revision
                        yield entry
                    if not response.more:
                        break
                following = self.client.watch(log_prefix, prefix_end(log_prefix), response.header.revision + 1)
                try:
                    async for batch in following:
                        pause = _RETRY_S
                        values = [e.kv.value for e in batch.events if e.type == kv_pb2.Event.PUT]
                        for entry in await self._entries(values):
                            if entry.meta.revision > revision:
                                revision = entry.meta.revision
                                yield entry
                finally:
                    await following.aclose()
            except Compacted:
                continue  # read the log again from the last change yielded
            except StoreError as e:
                if self._closed:
                    return
                log.warning("event=store_watch_broken revision=%d error=%s retry_in=%.1f", revision, e, pause)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._closing.wait(), pause)
                pause = min(pause * 2, 2.0)

    async def _entries(self, values: Sequence[bytes]) -> builtins.list[ShardVersion]:
        metas = [_meta(v)[0] for v in values]
        texts = await self._texts_of([m.content_hash for m in metas])
        return [ShardVersion(m, texts[m.content_hash]) for m in metas]

    # --- writes ----------------------------------------------------------------------

    async def put(self, shard: str, text: str, *, base_version: int | None, author: str, message: str,
                  source: Source, owner: str) -> Version:  # fmt: skip
        if not shard:
            raise ValueError("a shard needs a name")
        write = _Planned(shard, text, base_version, False, owner)
        return (await self._write([write], author, message, source))[0]

    async def put_many(self, writes: Sequence[Write], *, author: str, message: str,
                       source: Source) -> tuple[Version, ...]:  # fmt: skip
        if any(not w.shard for w in writes):
            raise ValueError("a shard needs a name")
        if len({w.shard for w in writes}) != len(writes):
            raise ValueError("put_many: each shard at most once")
        if not writes:
            return ()
        planned = [_Planned(w.shard, w.text, w.base_version, False, w.owner) for w in writes]
        return await self._write(planned, author, message, source)

    async def delete(self, shard: str, *, base_version: int, author: str, message: str) -> Version:
        return (await self._write([_Planned(shard, "", base_version, True, None)], author, message, "api"))[0]

    async def _write(self, writes: builtins.list[_Planned], author: str, message: str,
                     source: Source) -> tuple[Version, ...]:  # fmt: skip
        """Run to the end even if the caller is cancelled: it could not tell whether
        the write was stored anyway."""
        self._check_writable()
        task = asyncio.ensure_future(self._write_until_done(writes, author, message, source))
        return await asyncio.shield(task)

    async def _write_until_done(self, writes: builtins.list[_Planned], author: str, message: str,
                                source: Source) -> tuple[Version, ...]:  # fmt: skip
        write_id = secrets.token_hex(8)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + WRITE_DEADLINE_S
        shards = [w.shard for w in writes]
        state: tuple[builtins.list[_Head], int, int] | None = None  # heads, seq, seq's mod revision
        attempted: builtins.list[Version] | None = None  # an attempt whose answer was lost
        last_error: EtcdError | None = None
        while True:
            try:
                if attempted is not None and await self._applied(attempted[0].revision, write_id):
                    return tuple(attempted)  # stored before its answer was lost
                attempted = None
                if state is None:
                    state = await self._read_for_write(shards)
                heads, seq, seq_mod = state
                at = self._clock()
                versions = [_next_version(w, h, seq + i + 1, author, message, source, at)
                            for i, (w, h) in enumerate(zip(writes, heads, strict=True))]  # fmt: skip
                compare = [mod_is(self._head_key(w.shard), h.mod_revision) for w, h in zip(writes, heads, strict=True)]
                compare.append(mod_is(self._seq_key, seq_mod))
                success = [op for w, v in zip(writes, versions, strict=True) for op in self._ops(w, v, write_id)]
                success += [self._keep_text(text) for text in {w.text: None for w in writes}]
                success.append(put(self._seq_key, str(seq + len(writes)).encode()))
                failure = [get(self._head_key(s)) for s in shards] + [get(self._seq_key)]
                attempted = versions
                response = await self.client.txn(compare, success, failure, timeout_s=self.client.timeout_s)
                attempted = None
                if response.succeeded:
                    for w in writes:
                        self._remember(content_hash(w.text), w.text)
                    return tuple(versions)
                state = _read_back(response)
            except (Conflict, NotFound):
                raise
            except EtcdError as e:
                if e.code is not None and e.code.name in ("INVALID_ARGUMENT", "RESOURCE_EXHAUSTED"):
                    raise StoreError(f"etcd refused the write of {len(writes)} shard(s) ({e}); a batch this "
                                     "large needs a larger --max-txn-ops / --max-request-bytes on every "
                                     "etcd member") from None
                state, last_error = None, e
                if loop.time() >= deadline:
                    raise StoreError(f"the config store at {self.url} is unreachable: {last_error}") from None
                await asyncio.sleep(0.1)

    async def _applied(self, revision: int, write_id: str) -> bool:
        """Whether the change numbered ``revision`` is the one written with ``write_id``."""
        response = await self.client.range(rpc_pb2.RangeRequest(key=self._log_key(revision)))
        return bool(response.kvs) and _meta(response.kvs[0].value)[1] == write_id

    async def _read_for_write(self, shards: Sequence[str]) -> tuple[builtins.list[_Head], int, int]:
        response = await self.client.txn([], [get(self._head_key(s)) for s in shards] + [get(self._seq_key)])
        return _read_back(response)

    def _ops(self, write: _Planned, version: Version, write_id: str) -> builtins.list[rpc_pb2.RequestOp]:
        return [
            put(self._head_key(write.shard), _encode(version, write_id)),
            put(self._ver_key(write.shard, version.number), _encode(version)),
            put(self._log_key(version.revision), _encode(version, write_id)),
        ]

    def _keep_text(self, text: str) -> rpc_pb2.RequestOp:
        """Store a text under its hash unless it is there already (a nested transaction)."""
        key = self._text_key(content_hash(text))
        return rpc_pb2.RequestOp(request_txn=rpc_pb2.TxnRequest(compare=[absent(key)],
                                                                success=[put(key, text.encode())]))

    # --- records ---------------------------------------------------------------------

    def _record_key(self, kind: str, name: str) -> bytes:
        return self.prefix + f"rec/{kind}/{name}".encode()

    async def get_record(self, kind: str, name: str) -> Record | None:
        response = await self._read(lambda: self.client.range(rpc_pb2.RangeRequest(key=self._record_key(kind, name))))
        return _record(kind, response.kvs[0])[0] if response.kvs else None

    async def list_records(self, kind: str) -> tuple[Record, ...]:
        start = self.prefix + f"rec/{kind}/".encode()
        response = await self._read(lambda: self.client.range(rpc_pb2.RangeRequest(key=start, range_end=prefix_end(start))))
        return tuple(_record(kind, kv)[0] for kv in response.kvs)

    async def put_record(self, kind: str, name: str, data: str, *, base_version: int | None) -> Record:
        check_record_key(kind, name)
        return await self._record_write(kind, name, data, base_version)

    async def delete_record(self, kind: str, name: str, *, base_version: int) -> None:
        await self._record_write(kind, name, None, base_version)

    async def _record_write(self, kind: str, name: str, data: str | None, base: int | None) -> Record:
        """A put (``data``) or delete (None) with compare-and-set on the key's version;
        it runs to its end even if the caller is cancelled."""
        self._check_writable()
        return await asyncio.shield(asyncio.ensure_future(self._record_until_done(kind, name, data, base)))

    def _check_writable(self) -> None:
        if self._closed:
            raise StoreError(f"the config store at {self.url} is closed")
        reason = self.refuse_writes()
        if reason is not None:
            raise StoreError(f"the config store at {self.url} refuses writes now: {reason}")

    async def _record_until_done(self, kind: str, name: str, data: str | None, base: int | None) -> Record:
        key = self._record_key(kind, name)
        write_id = secrets.token_hex(8)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + WRITE_DEADLINE_S
        at = self._clock()
        value = json.dumps({"data": data, "at": at.isoformat(), "wid": write_id}).encode()
        op = put(key, value) if data is not None else delete(key)
        compare = rpc_pb2.Compare(result=rpc_pb2.Compare.EQUAL, target=rpc_pb2.Compare.VERSION, key=key,
                                  version=base or 0)  # fmt: skip
        unsure = False  # an attempt's answer was lost: it may have been applied
        while True:
            try:
                response = await self.client.txn([compare], [op], [get(key)])
            except EtcdError as e:
                if loop.time() >= deadline:
                    raise StoreError(f"the config store at {self.url} is unreachable: {e}") from None
                unsure = True
                await asyncio.sleep(0.1)
                continue
            if response.succeeded:
                return Record(kind, name, (base or 0) + 1, data or "", at)
            kvs = response.responses[0].response_range.kvs
            current, current_id = _record(kind, kvs[0]) if kvs else (None, "")
            if unsure and (current_id == write_id if data is not None else current is None):
                return current or Record(kind, name, 0, "", at)
            raise RecordConflict(kind, name, base, current)

    # --- audit -----------------------------------------------------------------------

    async def append_audit(self, *, actor: str, action: str, shard: str | None, base_version: int | None,
                           new_version: int | None, accepted: bool, reason: str = "") -> AuditEntry:  # fmt: skip
        at = self._clock()
        deadline = asyncio.get_running_loop().time() + WRITE_DEADLINE_S
        seq, seq_mod = await self._audit_seq()
        while True:
            entry = AuditEntry(seq + 1, at, actor, action, shard, base_version, new_version, accepted, reason)
            value = json.dumps(_audit_json(entry)).encode()
            key = f"{_AUDIT_IDS - 1 - entry.id:016d}".encode()
            ops = [put(self.prefix + b"audit/" + key, value), put(self._audit_seq_key, str(entry.id).encode())]
            if shard is not None:
                ops.append(put(self.prefix + f"audit-shard/{_name(shard)}/".encode() + key, value))
            try:
                response = await self.client.txn([mod_is(self._audit_seq_key, seq_mod)], ops,
                                                 [get(self._audit_seq_key)])  # fmt: skip
            except EtcdError as e:
                # Ids are taken by compare-and-set: a retry that finds its id taken
                # moves on, so an entry may at worst be recorded twice, never lost.
                if asyncio.get_running_loop().time() >= deadline:
                    raise StoreError(f"the config store at {self.url} is unreachable: {e}") from None
                await asyncio.sleep(0.1)
                seq, seq_mod = await self._audit_seq()
                continue
            if response.succeeded:
                return entry
            kvs = response.responses[0].response_range.kvs
            seq, seq_mod = (int(kvs[0].value), kvs[0].mod_revision) if kvs else (0, 0)

    async def _audit_seq(self) -> tuple[int, int]:
        response = await self._read(lambda: self.client.range(rpc_pb2.RangeRequest(key=self._audit_seq_key)))
        return (int(response.kvs[0].value), response.kvs[0].mod_revision) if response.kvs else (0, 0)

    async def audit_log(self, *, limit: int = 100, before: int | None = None,
                        shard: str | None = None) -> tuple[AuditEntry, ...]:  # fmt: skip
        if limit < 1:
            raise ValueError(f"limit must be 1 or more, not {limit}")
        base = self.prefix + (b"audit/" if shard is None else f"audit-shard/{_name(shard)}/".encode())
        start = base if before is None else base + f"{_AUDIT_IDS - before:016d}".encode()
        response = await self._read(lambda: self.client.range(rpc_pb2.RangeRequest(
            key=start, range_end=prefix_end(base), limit=limit)))  # fmt: skip
        return tuple(_audit_entry(json.loads(kv.value)) for kv in response.kvs)


@dataclass(frozen=True)
class _Planned:
    shard: str
    text: str
    base_version: int | None
    deleting: bool
    owner: str | None  # None: a tombstone keeps the deleted shard's owner


def _next_version(write: _Planned, head: _Head, revision: int, author: str, message: str,
                  source: Source, at: datetime) -> Version:  # fmt: skip
    """The version ``write`` makes on ``head``; Conflict or NotFound if it may not."""
    current = head.meta
    if write.deleting and (current is None or current.deleted):
        raise NotFound(f"shard {write.shard!r} does not exist" + (" (it is already deleted)" if current else ""))
    creating = write.base_version is None and (current is None or current.deleted)
    if not creating and (current is None or current.number != write.base_version):
        raise Conflict(write.shard, write.base_version, current)
    owner = write.owner if write.owner is not None else current.owner  # type: ignore[union-attr]
    number = 1 if current is None else current.number + 1
    return Version(write.shard, number, revision, author, at, message, source, owner,
                   content_hash(write.text), write.deleting)  # fmt: skip


def _read_back(response: rpc_pb2.TxnResponse) -> tuple[list[_Head], int, int]:
    """Heads and ``seq`` from a transaction's reads (the last one is ``seq``)."""
    ranges = [r.response_range.kvs for r in response.responses]
    seq_kvs = ranges[-1]
    seq, seq_mod = (int(seq_kvs[0].value), seq_kvs[0].mod_revision) if seq_kvs else (0, 0)
    return [_head(kvs) for kvs in ranges[:-1]], seq, seq_mod


def _head(kvs: Sequence[kv_pb2.KeyValue]) -> _Head:
    if not kvs:
        return _Head(None, 0, "")
    meta, write_id = _meta(kvs[0].value)
    return _Head(meta, kvs[0].mod_revision, write_id)


def _encode(v: Version, write_id: str = "") -> bytes:
    data: dict[str, Any] = {"shard": v.shard, "n": v.number, "rev": v.revision, "author": v.author,
                            "at": v.at.isoformat(), "message": v.message, "source": v.source,
                            "owner": v.owner, "hash": v.content_hash, "deleted": v.deleted}  # fmt: skip
    if write_id:
        data["wid"] = write_id
    return json.dumps(data, separators=(",", ":")).encode()


def _meta(value: bytes) -> tuple[Version, str]:
    d = json.loads(value)
    return (Version(d["shard"], d["n"], d["rev"], d["author"], datetime.fromisoformat(d["at"]), d["message"],
                    d["source"], d["owner"], d["hash"], d["deleted"]), d.get("wid", ""))  # fmt: skip


def _record(kind: str, kv: kv_pb2.KeyValue) -> tuple[Record, str]:
    d = json.loads(kv.value)
    name = kv.key.decode().rsplit("/", 1)[1]
    return Record(kind, name, int(kv.version), d["data"], datetime.fromisoformat(d["at"])), d.get("wid", "")


def _audit_json(e: AuditEntry) -> dict[str, Any]:
    return {"id": e.id, "at": e.at.isoformat(), "actor": e.actor, "action": e.action, "shard": e.shard,
            "base": e.base_version, "new": e.new_version, "accepted": e.accepted, "reason": e.reason}  # fmt: skip


def _audit_entry(d: dict[str, Any]) -> AuditEntry:
    return AuditEntry(d["id"], datetime.fromisoformat(d["at"]), d["actor"], d["action"], d["shard"], d["base"],
                      d["new"], d["accepted"], d["reason"])  # fmt: skip


