"""``dals.kv.client``: the async client of the Key-Value DAL (``dgw.kv.v1`` over gRPC).

- **Writes** mint one idempotency token per logical write and send it unchanged on
  every retry, and on every call the write is split into (more items than one call
  takes, or a value over the chunk size: staged in chunks, then committed). So any
  write may be retried: it applies once.
- **Retries** only what is safe: a call that failed with ``UNAVAILABLE`` or
  ``DEADLINE_EXCEEDED`` (writes carry their token, reads change nothing), with
  exponential backoff and jitter, ``attempts`` times in all. Never an
  ``INVALID_ARGUMENT``, ``FAILED_PRECONDITION`` or ``PERMISSION_DENIED``.
- **Reads** page with tokens and put values split across pages back together; a
  value that changed between two pages (``ABORTED``) is read again from its start.
- ``scan`` yields batches of whole items with a cursor to resume right after them
  (what a backfill keeps): each item is seen once across an interrupted scan.

    client = KvClient.connect("127.0.0.1:8980", tls=TlsFiles.from_dir(".work/demo-app"),
                              server_name="demo.gateway.dgw.local")
    await client.put("demo", "user-1", {b"name": b"Ada"})
    items = await client.get("demo", "user-1")
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from . import pages, tokens
from .v1 import kv_pb2, kv_pb2_grpc

MIB = 1024 * 1024
RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
READ_AGAIN = 3
"""How many times a read starts over after a value changed under it."""


class KvCallError(Exception):
    """A call the DAL (or the gateway in front of it) refused or could not answer."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message


@dataclass(frozen=True)
class TlsFiles:
    """A client certificate, its key and the CA bundle to trust: what ``dgw ca issue
    --out DIR`` writes (``cert.pem``, ``key.pem``, ``bundle.pem``)."""

    cert: Path
    key: Path
    ca: Path

    @classmethod
    def from_dir(cls, directory: Path | str) -> TlsFiles:
        d = Path(directory)
        return cls(d / "cert.pem", d / "key.pem", d / "bundle.pem")

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(self.ca.read_bytes(), self.key.read_bytes(), self.cert.read_bytes())


@dataclass(frozen=True)
class ItemRead:
    key: bytes
    value: bytes
    write_time_us: int = 0
    """With ``with_write_times``: the item's version (its write time and writer id)."""
    writer_id: bytes = b""


@dataclass(frozen=True)
class Put:
    key: bytes
    value: bytes


@dataclass(frozen=True)
class Delete:
    """Keys, a range [start, end) (end None: to the last key), or, with neither, every item."""

    keys: Sequence[bytes] = ()
    start: bytes | None = None
    end: bytes | None = None


@dataclass
class ScanBatch:
    """Whole items of one or more records, in order, and where to resume after them
    (``cursor`` b"": the scan is complete)."""

    items: list[tuple[str, ItemRead]] = field(default_factory=list)
    cursor: bytes = b""


def predicate(keys: Sequence[bytes] | None = None, start: bytes | None = None,
              end: bytes | None = None) -> kv_pb2.Predicate:  # fmt: skip
    p = kv_pb2.Predicate()
    if keys:
        p.keys.keys.extend(keys)
    elif start is not None or end is not None:
        p.range.start, p.range.end = start or b"", end or b""
    else:
        p.all.SetInParent()
    return p


class KvClient:
    def __init__(
        self,
        channel: grpc.aio.Channel,
        *,
        timeout_s: float = 10.0,
        attempts: int = 3,
        chunk_bytes: int = 1 * MIB,
        max_call_bytes: int = 3 * MIB,
        max_items_per_call: int = 1000,
    ) -> None:
        self.channel = channel
        self.stub = kv_pb2_grpc.KeyValueStub(channel)  # type: ignore[no-untyped-call]
        self.timeout_s = timeout_s
        self.attempts = attempts
        self.chunk_bytes = chunk_bytes
        self.max_call_bytes = max_call_bytes
        self.max_items_per_call = max_items_per_call

    @classmethod
    def connect(cls, target: str, *, tls: TlsFiles | None = None, server_name: str | None = None,
                **options: Any) -> KvClient:  # fmt: skip
        """A client of ``HOST:PORT``: plaintext, or mTLS with ``tls`` (``server_name``:
        the name the gateway's certificate carries, e.g. ``SHARD.gateway.dgw.local``)."""
        channel_options = [("grpc.max_receive_message_length", 16 * MIB)]
        if server_name:
            channel_options.append(("grpc.ssl_target_name_override", server_name))  # type: ignore[arg-type]
        if tls is None:
            channel = grpc.aio.insecure_channel(target, options=channel_options)
        else:
            channel = grpc.aio.secure_channel(target, tls.credentials(), options=channel_options)
        return cls(channel, **options)

    async def close(self) -> None:
        await self.channel.close(None)

    async def __aenter__(self) -> KvClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    # --- calls, retried when that is safe --------------------------------------------

    async def _call(self, method: Any, request: Any) -> Any:
        delay = 0.05
        for attempt in range(1, self.attempts + 1):
            try:
                return await method(request, timeout=self.timeout_s)
            except grpc.aio.AioRpcError as e:
                if e.code() not in RETRYABLE or attempt == self.attempts:
                    raise KvCallError(e.code(), e.details() or "") from None
            await asyncio.sleep(delay * random.uniform(0.5, 1.5))
            delay = min(delay * 4, 2.0)
        raise AssertionError("unreachable")

    # --- writes ----------------------------------------------------------------------

    async def put(self, namespace: str, record_id: str,
                  items: Mapping[bytes, bytes] | Iterable[tuple[bytes, bytes]],
                  token: kv_pb2.IdempotencyToken | None = None) -> int:  # fmt: skip
        """Set the items; how many changed (0: this write, or a newer one, was there).
        Values over the chunk size are staged in chunks and committed; every call of
        the write carries the same token, but only the items of one call apply together."""
        token = token or tokens.new_token()
        pairs = list(items.items()) if isinstance(items, Mapping) else list(items)
        small = [(k, v) for k, v in pairs if len(v) <= self.chunk_bytes]
        large = [(k, v) for k, v in pairs if len(v) > self.chunk_bytes]
        applied = 0
        batch: list[kv_pb2.Item] = []
        size = 0
        for key, value in small:
            if batch and (len(batch) >= self.max_items_per_call or size + len(key) + len(value) > self.max_call_bytes):
                applied += await self._put(namespace, record_id, batch, token)
                batch, size = [], 0
            batch.append(kv_pb2.Item(key=key, value=value))
            size += len(key) + len(value) + 16
        if batch:
            applied += await self._put(namespace, record_id, batch, token)
        for key, value in large:
            applied += await self._put_chunked(namespace, record_id, key, value, token)
        return applied

    async def _put(self, namespace: str, record_id: str, items: list[kv_pb2.Item],
                   token: kv_pb2.IdempotencyToken) -> int:  # fmt: skip
        request = kv_pb2.PutItemsRequest(namespace=namespace, id=record_id, items=items, idempotency_token=token)
        response = await self._call(self.stub.PutItems, request)
        return int(response.applied)

    async def _put_chunked(self, namespace: str, record_id: str, key: bytes, value: bytes,
                           token: kv_pb2.IdempotencyToken) -> int:  # fmt: skip
        parts = [value[i:i + self.chunk_bytes] for i in range(0, len(value), self.chunk_bytes)]
        per_call = max(1, self.max_call_bytes // self.chunk_bytes)
        for first in range(0, len(parts), per_call):
            chunk_items = [
                kv_pb2.Item(key=key, value=part, chunk=kv_pb2.Chunk(index=first + i, count=len(parts),
                                                                     total_size=len(value)))
                for i, part in enumerate(parts[first:first + per_call])
            ]  # fmt: skip
            await self._put(namespace, record_id, chunk_items, token)
        commit = kv_pb2.Item(key=key, chunk=kv_pb2.Chunk(count=len(parts), total_size=len(value), commit=True))
        return await self._put(namespace, record_id, [commit], token)

    async def delete(self, namespace: str, record_id: str, keys: Sequence[bytes] | None = None,
                     start: bytes | None = None, end: bytes | None = None,
                     token: kv_pb2.IdempotencyToken | None = None) -> int:  # fmt: skip
        """Delete keys, a range [start, end), or (neither) the whole record."""
        request = kv_pb2.DeleteItemsRequest(namespace=namespace, id=record_id, predicate=predicate(keys, start, end),
                                            idempotency_token=token or tokens.new_token())  # fmt: skip
        return int((await self._call(self.stub.DeleteItems, request)).applied)

    async def mutate(self, namespace: str, record_id: str, mutations: Sequence[Put | Delete],
                     token: kv_pb2.IdempotencyToken | None = None) -> int:  # fmt: skip
        """Puts and deletes on one record, applied together, in order."""
        request = kv_pb2.MutateItemsRequest(namespace=namespace, id=record_id,
                                            idempotency_token=token or tokens.new_token())  # fmt: skip
        for m in mutations:
            if isinstance(m, Put):
                request.mutations.add(put=kv_pb2.Item(key=m.key, value=m.value))
            else:
                request.mutations.add(delete=predicate(m.keys, m.start, m.end))
        return int((await self._call(self.stub.MutateItems, request)).applied)

    # --- reads -----------------------------------------------------------------------

    async def get_page(self, request: kv_pb2.GetItemsRequest) -> kv_pb2.GetItemsResponse:
        response: kv_pb2.GetItemsResponse = await self._call(self.stub.GetItems, request)
        return response

    async def get(self, namespace: str, record_id: str, keys: Sequence[bytes] | None = None,
                  start: bytes | None = None, end: bytes | None = None, page_size_bytes: int = 0,
                  with_write_times: bool = False) -> list[ItemRead]:  # fmt: skip
        """The record's items (all, some keys, or a range), every page read, values whole."""
        for attempt in range(1, READ_AGAIN + 1):
            request = kv_pb2.GetItemsRequest(namespace=namespace, id=record_id, predicate=predicate(keys, start, end),
                                             page_size_bytes=page_size_bytes, with_write_times=with_write_times)  # fmt: skip
            out: list[ItemRead] = []
            joiner = _Joiner()
            try:
                while True:
                    page = await self.get_page(request)
                    out.extend(item for item in map(joiner.add, page.items) if item is not None)
                    if not page.next_page_token:
                        return out
                    request.page_token = page.next_page_token
            except KvCallError as e:
                if e.code is not grpc.StatusCode.ABORTED or attempt == READ_AGAIN:
                    raise
        raise AssertionError("unreachable")

    async def scan(self, namespace: str, cursor: bytes = b"", page_size_bytes: int = 0,
                   with_write_times: bool = False) -> AsyncIterator[ScanBatch]:  # fmt: skip
        """Every record's items in order, one batch per page, from ``cursor``."""
        digest = pages.request_digest(b"scan", b"w" if with_write_times else b"")
        request = kv_pb2.ScanItemsRequest(namespace=namespace, cursor=cursor, page_size_bytes=page_size_bytes,
                                          with_write_times=with_write_times)  # fmt: skip
        joiner = _Joiner()
        safe = cursor  # resumes right after the last whole item handed out
        again = 0
        while True:
            try:
                page: kv_pb2.ScanItemsResponse = await self._call(self.stub.ScanItems, request)
            except KvCallError as e:
                again += 1
                if e.code is not grpc.StatusCode.ABORTED or again >= READ_AGAIN:
                    raise
                joiner, request.cursor = _Joiner(), safe
                continue
            batch = ScanBatch()
            for record in page.records:
                for item in record.items:
                    whole = joiner.add(item)
                    if whole is not None:
                        batch.items.append((record.id, whole))
            if not page.next_cursor:
                yield batch
                return
            if joiner.pending:
                last = batch.items[-1] if batch.items else None
                if last is not None:
                    position = pages.Position(last[0], last[1].key)
                    safe = pages.encode(pages.PageToken(namespace, "", digest, position))
            else:
                safe = page.next_cursor
            batch.cursor = safe
            yield batch
            request.cursor = page.next_cursor


class _Joiner:
    """Puts values split across pages (``Item.part``) back together."""

    def __init__(self) -> None:
        self._key: bytes | None = None
        self._parts: list[bytes] = []
        self._size = 0

    @property
    def pending(self) -> bool:
        return self._key is not None

    def add(self, item: kv_pb2.Item) -> ItemRead | None:
        if not item.HasField("part"):
            return ItemRead(item.key, item.value, item.write_time_us, item.writer_id)
        if item.part.offset == 0:
            self._key, self._parts, self._size = item.key, [], 0
        elif item.key != self._key or item.part.offset != self._size:
            raise KvCallError(grpc.StatusCode.DATA_LOSS, f"a value part of key {item.key!r} arrived out of order")
        self._parts.append(item.value)
        self._size += len(item.value)
        if self._size < item.part.total_size:
            return None
        self._key = None
        return ItemRead(item.key, b"".join(self._parts), item.write_time_us, item.writer_id)
