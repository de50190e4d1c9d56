"""The KV calls, apart from how they arrive (gRPC or HTTP): guardrails, idempotent
writes, chunked values, byte-bounded pages, and the look-aside cache.

Every call is checked whole before anything is stored, so a refused call stores
nothing; a refusal is a ``KvError`` naming the limit (``config.Limits``) it broke.
Requests and answers are the ``dgw.kv.v1`` messages; GetItems answers with the
serialized response, which is what the cache keeps and gRPC sends as it is.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType

from . import pages, tokens
from .cache import LookasideCache
from .config import KvConfig, Limits
from .engines import (
    Engine,
    EngineError,
    KeyRange,
    Keys,
    Selection,
    StoredItem,
    Version,
    open_engine,
)
from .engines.base import CommitOutcome, normalize
from .errors import Code, KvError, invalid, precondition
from .faults import Faults
from .v1 import kv_pb2

log = logging.getLogger("dals.kv")

# What a read counts per item besides key and value when it returns write times.
WRITE_TIME_BYTES = 24
# A value part shorter than this does not start at the end of a page: it waits for the next.
MIN_PART_BYTES = 64
_FIRST_BATCH, _MAX_BATCH = 64, 1024
OK, CANCELLED, UNKNOWN = "OK", "CANCELLED", "UNKNOWN"
_WRITES = frozenset({"PutItems", "DeleteItems", "MutateItems"})

Clock = Callable[[], float]


@dataclass(frozen=True)
class Namespace:
    name: str
    engine: Engine
    cache_ttl_s: float


@dataclass(frozen=True)
class _Page:
    items: list[tuple[str, kv_pb2.Item]]
    next: pages.Position | None
    cut_short: bool
    """Stopped before its budget because the call neared its deadline."""


class KvService:
    def __init__(
        self,
        config: KvConfig,
        engines: dict[str, Engine],
        cache: LookasideCache | None = None,
        *,
        now_us: Callable[[], int] = tokens.now_us,
        monotonic: Clock = time.monotonic,
    ) -> None:
        self.config = config
        self.limits: Limits = config.limits
        self.engines = engines
        self.cache = cache
        self.namespaces = {
            name: Namespace(name, engines[ns.engine], ns.cache_ttl_s) for name, ns in config.namespaces.items()
        }
        self._now_us = now_us
        self._monotonic = monotonic
        self.faults = Faults(None)
        """The test fault switch (``faults.py``); the server sets it from KV_FAULTS_FILE."""
        self.counters: Counter[str] = Counter()
        """What ``GET /stats`` shows. Per call (``grpc.PutItems``, ``http.GetItems``...): the
        calls received under its name, and under ``NAME.OUTCOME`` how the answered ones
        ended (``call_ended``); ``error.CODE`` over all calls; ``items_applied``."""

    @classmethod
    async def start(cls, config: KvConfig) -> KvService:
        """Open the engines the namespaces use (creating or upgrading their schemas) and
        the cache; EngineError if an engine cannot be opened."""
        engines: dict[str, Engine] = {}
        try:
            for name, engine_config in config.used_engines().items():
                engines[name] = await open_engine(engine_config)
                log.info("event=engine_open engine=%s kind=%s", name, engine_config.kind)
        except BaseException:
            for engine in engines.values():
                await engine.close()
            raise
        cache = LookasideCache(config.cache) if config.cache is not None else None
        return cls(config, engines, cache)

    async def close(self) -> None:
        if self.cache is not None:
            await self.cache.close()
        for engine in self.engines.values():
            await engine.close()

    def call_ended(self, call: str, outcome: str) -> None:
        """Count how a call (``grpc.PutItems``) ended: ``OK``, an error's code, ``CANCELLED``
        (its caller went away before the answer) or ``UNKNOWN`` (a bug). Received minus
        ended is what is still running: a shadow target's copy of a write has been applied
        only once it ended OK, and a cancelled write may or may not have been applied."""
        self.counters[f"{call}.{outcome}"] += 1
        if outcome == CANCELLED and call.rpartition(".")[2] in _WRITES:
            log.warning("event=write_cancelled call=%s reason=\"its caller went away before the answer: "
                        "applied or not, as the engine's transaction ended\"", call)  # fmt: skip

    # --- writes --------------------------------------------------------------------

    async def put_items(self, req: kv_pb2.PutItemsRequest, size: int) -> kv_pb2.WriteResponse:
        ns, version = self._write_call(req, size)
        n = len(req.items)
        if not 1 <= n <= self.limits.max_items_per_call:
            raise invalid(f"a put carries 1 to {self.limits.max_items_per_call} items "
                          f"(limits.max_items_per_call), not {n}")  # fmt: skip
        inline: list[tuple[bytes, bytes | None]] = []
        staged: dict[bytes, list[tuple[int, bytes]]] = {}
        commits: list[kv_pb2.Item] = []
        for i, item in enumerate(req.items):
            where = f"items[{i}]"
            self._check_key(item.key, f"{where}.key")
            self._no_read_fields(item, where)
            if item.HasField("chunk"):
                self._check_chunk(item, where)
                if item.chunk.commit:
                    commits.append(item)
                else:
                    staged.setdefault(item.key, []).append((item.chunk.index, item.value))
            else:
                self._check_value(item, where)
                inline.append((item.key, item.value))
        applied = 0
        with _ENGINE_ERRORS:
            if inline:
                applied += await ns.engine.write(ns.name, req.id, normalize(inline), version)
            for key, chunks in staged.items():
                late = await ns.engine.stage_chunks(ns.name, req.id, key, version, chunks, self._now_us())
                applied += late is CommitOutcome.APPLIED
            for item in commits:
                outcome = await ns.engine.commit_chunks(ns.name, req.id, item.key, version, item.chunk.count,
                                                        item.chunk.total_size)  # fmt: skip
                if outcome is CommitOutcome.INCOMPLETE:
                    raise precondition(
                        f"key {_show(item.key)} is not committed yet: not all {item.chunk.count} chunks of "
                        f"{item.chunk.total_size} bytes are staged under this token (every chunk but the "
                        "last the same size); the commit applies when the missing ones are staged")  # fmt: skip
                applied += outcome is CommitOutcome.APPLIED
        return await self._written(ns, req.id, applied)

    async def delete_items(self, req: kv_pb2.DeleteItemsRequest, size: int) -> kv_pb2.WriteResponse:
        ns, version = self._write_call(req, size)
        ops = self._deletes(req.predicate if req.HasField("predicate") else None, "predicate")
        with _ENGINE_ERRORS:
            applied = await ns.engine.write(ns.name, req.id, normalize(ops), version)
        return await self._written(ns, req.id, applied)

    async def mutate_items(self, req: kv_pb2.MutateItemsRequest, size: int) -> kv_pb2.WriteResponse:
        ns, version = self._write_call(req, size)
        n = len(req.mutations)
        if not 1 <= n <= self.limits.max_items_per_call:
            raise invalid(f"a mutate carries 1 to {self.limits.max_items_per_call} mutations "
                          f"(limits.max_items_per_call), not {n}")  # fmt: skip
        ops: list[tuple[KeyRange, None] | tuple[bytes, bytes | None]] = []
        keys = 0
        for i, m in enumerate(req.mutations):
            where = f"mutations[{i}]"
            match m.WhichOneof("op"):
                case "put":
                    self._check_key(m.put.key, f"{where}.put.key")
                    self._no_read_fields(m.put, f"{where}.put")
                    if m.put.HasField("chunk"):
                        raise invalid(f"{where}.put: chunked values are written with PutItems, not MutateItems")
                    self._check_value(m.put, f"{where}.put")
                    ops.append((m.put.key, m.put.value))
                    keys += 1
                case "delete":
                    deletes = self._deletes(m.delete, f"{where}.delete")
                    keys += len(deletes)
                    ops.extend(deletes)
                case _:
                    raise invalid(f"{where} has neither put nor delete")
        if keys > self.limits.max_items_per_call:
            raise invalid(f"a mutate touches at most {self.limits.max_items_per_call} keys "
                          f"(limits.max_items_per_call), not {keys}")  # fmt: skip
        with _ENGINE_ERRORS:
            applied = await ns.engine.write(ns.name, req.id, normalize(ops), version)
        return await self._written(ns, req.id, applied)

    def _write_call(
        self, req: kv_pb2.PutItemsRequest | kv_pb2.DeleteItemsRequest | kv_pb2.MutateItemsRequest, size: int
    ) -> tuple[Namespace, Version]:
        self._check_size(size)
        ns = self._namespace(req.namespace)
        self._check_id(req.id)
        token = req.idempotency_token if req.HasField("idempotency_token") else None
        version = tokens.check(token, self._now_us(), self.limits.token_max_age_s, self.limits.token_max_ahead_s)
        return ns, version

    async def _written(self, ns: Namespace, record_id: str, applied: int) -> kv_pb2.WriteResponse:
        self.counters["items_applied"] += applied
        if self.cache is not None and ns.cache_ttl_s:
            await self.cache.invalidate(ns.name, record_id, ns.cache_ttl_s)
        return kv_pb2.WriteResponse(applied=applied)

    def _deletes(self, predicate: kv_pb2.Predicate | None, where: str) -> list[tuple[KeyRange, None] | tuple[bytes, bytes | None]]:
        selection = self._selection(predicate, where)
        if isinstance(selection, Keys):
            return [(k, None) for k in selection.keys]
        return [(selection, None)]

    # --- reads ---------------------------------------------------------------------

    async def get_items(self, req: kv_pb2.GetItemsRequest, size: int, deadline: float | None = None) -> bytes:
        """The serialized GetItemsResponse: from the cache when it has the page."""
        self._check_size(size)
        ns = self._namespace(req.namespace)
        self._check_id(req.id)
        predicate = req.predicate if req.HasField("predicate") else None
        selection = self._selection(predicate, "predicate")
        budget = self._budget(req.page_size_bytes)
        cached = self.cache is not None and ns.cache_ttl_s > 0
        # Only a page token or the cache needs the read's digest: most reads are one page.
        digest = _get_digest(predicate, req.with_write_times) if req.page_token or cached else ""
        start = None
        if req.page_token:
            start = pages.decode(req.page_token, field="page_token", namespace=ns.name, record_id=req.id,
                                 digest=digest).position  # fmt: skip
        generation = b""
        entry = ""
        if cached:
            assert self.cache is not None
            entry = pages.request_digest(digest.encode(), req.page_token, str(budget).encode())
            hit, generation = await self.cache.lookup(ns.name, req.id, entry)
            if hit is not None:
                return hit

        async def fetch(after: pages.Position | None, limit: int) -> list[tuple[str, StoredItem]]:
            items = await ns.engine.read_items(ns.name, req.id, selection, after.key if after else None, limit)
            return [(req.id, item) for item in items]

        page = await self._fill(ns, fetch, start, budget, req.with_write_times, deadline)
        response = kv_pb2.GetItemsResponse(items=[item for _, item in page.items])
        if page.next is not None:
            digest = digest or _get_digest(predicate, req.with_write_times)
            response.next_page_token = pages.encode(pages.PageToken(ns.name, req.id, digest, page.next))
        data = response.SerializeToString()
        if cached and not page.cut_short:
            assert self.cache is not None
            await self.cache.fill(ns.name, req.id, entry, generation, data, ns.cache_ttl_s)
        return data

    async def scan_items(self, req: kv_pb2.ScanItemsRequest, size: int, deadline: float | None = None) -> kv_pb2.ScanItemsResponse:
        self._check_size(size)
        ns = self._namespace(req.namespace)
        budget = self._budget(req.page_size_bytes)
        digest = pages.request_digest(b"scan", b"w" if req.with_write_times else b"")
        start = None
        if req.cursor:
            start = pages.decode(req.cursor, field="cursor", namespace=ns.name, record_id="", digest=digest).position

        async def fetch(after: pages.Position | None, limit: int) -> list[tuple[str, StoredItem]]:
            return await ns.engine.scan(ns.name, (after.record_id, after.key) if after else None, limit)

        page = await self._fill(ns, fetch, start, budget, req.with_write_times, deadline)
        response = kv_pb2.ScanItemsResponse()
        for record_id, item in page.items:
            if not response.records or response.records[-1].id != record_id:
                response.records.add(id=record_id)
            response.records[-1].items.append(item)
        if page.next is not None:
            response.next_cursor = pages.encode(pages.PageToken(ns.name, "", digest, page.next))
        return response

    async def _fill(
        self,
        ns: Namespace,
        fetch: Callable[[pages.Position | None, int], Awaitable[list[tuple[str, StoredItem]]]],
        start: pages.Position | None,
        budget: int,
        with_write_times: bool,
        deadline: float | None,
    ) -> _Page:
        """One page: items in order from ``start`` until ``budget`` bytes of keys and values
        are used, the items run out, or the call nears its deadline (but never an empty
        page). A value that fits no page is split into parts."""
        out: list[tuple[str, kv_pb2.Item]] = []
        used = 0
        extra = WRITE_TIME_BYTES if with_write_times else 0
        after = start
        with _ENGINE_ERRORS:
            if start is not None and start.version is not None:
                # Finish the value the last page began, if it is still the same value.
                item = await self._reread(ns, start)
                used, cont = await self._emit(ns, out, start.record_id, item, start.offset, budget, 0, extra)
                if cont is not None:
                    return _Page(out, cont, cut_short=False)
                after = pages.Position(start.record_id, item.key)
            limit = _FIRST_BATCH
            while True:
                if out and self._near(deadline):
                    return _Page(out, after, cut_short=True)
                rows = await fetch(after, limit)
                for rid, item in rows:
                    cost = len(item.key) + item.size + extra
                    if used + cost > budget and out and cost <= budget:
                        return _Page(out, after, cut_short=False)  # whole on the next page
                    used, cont = await self._emit(ns, out, rid, item, 0, budget, used, extra)
                    if cont is not None:
                        return _Page(out, cont, cut_short=False)
                    after = pages.Position(rid, item.key)
                    if used >= budget:
                        return _Page(out, after, cut_short=False)
                if len(rows) < limit:
                    return _Page(out, None, cut_short=False)
                limit = min(limit * 2, _MAX_BATCH)

    async def _reread(self, ns: Namespace, at: pages.Position) -> StoredItem:
        """The item a page token continues, if it still holds the version being read."""
        items = await ns.engine.read_items(ns.name, at.record_id, Keys((at.key,)), None, 1)
        if not items or items[0].version != at.version or at.offset >= items[0].size:
            raise _changed(at.key)
        return items[0]

    async def _emit(
        self, ns: Namespace, out: list[tuple[str, kv_pb2.Item]], record_id: str, item: StoredItem,
        offset: int, budget: int, used: int, extra: int,
    ) -> tuple[int, pages.Position | None]:  # fmt: skip
        """Add ``item`` from byte ``offset`` of its value: whole if it fits the page,
        else the part that does. Returns the bytes used and, for a part that leaves the
        value unfinished, where the next page continues it."""
        left = item.size - offset
        room = budget - used - len(item.key) - extra
        take = min(left, room)
        if take < left and take < MIN_PART_BYTES and out:
            return used, pages.Position(record_id, item.key, offset, item.version)
        take = max(take, min(left, MIN_PART_BYTES))
        value = await self._value(ns, record_id, item, offset, take)
        entry = kv_pb2.Item(key=item.key, value=value)
        if offset or take < left:
            entry.part.offset, entry.part.total_size = offset, item.size
        if extra:
            entry.write_time_us, entry.writer_id = item.version.write_time_us, item.version.writer
        out.append((record_id, entry))
        used += len(item.key) + take + extra
        if take < left:
            return used, pages.Position(record_id, item.key, offset + take, item.version)
        return used, None

    async def _value(self, ns: Namespace, record_id: str, item: StoredItem, offset: int, n: int) -> bytes:
        if item.value is not None:
            return item.value[offset:offset + n] if (offset or n < item.size) else item.value
        if n == 0:
            return b""
        size = item.chunk_size
        first, last = offset // size, (offset + n - 1) // size
        chunks = await ns.engine.read_chunks(ns.name, record_id, item.key, item.version, first, last)
        if chunks is None:
            raise _changed(item.key)
        joined = b"".join(chunks)
        start = offset - first * size
        return joined[start:start + n]

    def _near(self, deadline: float | None) -> bool:
        return deadline is not None and self._monotonic() >= deadline - self.limits.deadline_margin_ms / 1000

    # --- checks --------------------------------------------------------------------

    def _check_size(self, size: int) -> None:
        if size > self.limits.max_request_bytes:
            raise invalid(f"the request is {size} bytes, over the limit of {self.limits.max_request_bytes} "
                          "(limits.max_request_bytes); split it into several calls")  # fmt: skip

    def _namespace(self, name: str) -> Namespace:
        ns = self.namespaces.get(name)
        if ns is None:
            if not name:
                raise invalid("namespace is missing")
            declared = ", ".join(sorted(self.namespaces)) or "none"
            raise precondition(f"namespace {name[:80]!r} is not declared (declared: {declared}); "
                               "namespaces are added in the DAL's KV_CONFIG")  # fmt: skip
        return ns

    def _check_id(self, record_id: str) -> None:
        if not record_id:
            raise invalid("id is missing: every call names the record it reads or writes")
        n = len(record_id.encode())
        if n > self.limits.max_id_bytes:
            raise invalid(f"id is {n} bytes, over the limit of {self.limits.max_id_bytes} (limits.max_id_bytes)")
        if "\x00" in record_id:
            raise invalid("id must not contain NUL characters")

    def _check_key(self, key: bytes, where: str) -> None:
        if not key:
            raise invalid(f"{where} is empty: every item has a key")
        if len(key) > self.limits.max_key_bytes:
            raise invalid(f"{where} is {len(key)} bytes, over the limit of {self.limits.max_key_bytes} "
                          "(limits.max_key_bytes)")  # fmt: skip

    def _check_value(self, item: kv_pb2.Item, where: str) -> None:
        if len(item.value) > self.limits.max_value_bytes:
            raise invalid(f"{where}.value is {len(item.value)} bytes, over the limit of "
                          f"{self.limits.max_value_bytes} (limits.max_value_bytes) for one item; larger values "
                          "are written in chunks (dals.kv.client does this)")  # fmt: skip

    @staticmethod
    def _no_read_fields(item: kv_pb2.Item, where: str) -> None:
        if item.HasField("part") or item.write_time_us or item.writer_id:
            raise invalid(f"{where}: part, write_time_us and writer_id are set by reads only; a write's "
                          "time comes from its idempotency_token")  # fmt: skip

    def _check_chunk(self, item: kv_pb2.Item, where: str) -> None:
        c = item.chunk
        lim = self.limits
        if c.total_size > lim.max_item_bytes:
            raise invalid(f"{where}.chunk.total_size is {c.total_size} bytes, over the limit of "
                          f"{lim.max_item_bytes} (limits.max_item_bytes)")  # fmt: skip
        if c.count < 1 or c.count > -(-lim.max_item_bytes // 1024):
            raise invalid(f"{where}.chunk.count must be between 1 and {-(-lim.max_item_bytes // 1024)}")
        if c.commit:
            if item.value:
                raise invalid(f"{where}: a commit carries no value, only count and total_size")
            return
        if c.index >= c.count:
            raise invalid(f"{where}.chunk.index {c.index} is not below count {c.count}")
        if not item.value:
            raise invalid(f"{where}: a chunk carries its bytes in value")
        self._check_value(item, where)

    def _selection(self, predicate: kv_pb2.Predicate | None, where: str) -> Selection:
        kind = predicate.WhichOneof("match") if predicate is not None else None
        if predicate is None or kind in (None, "all"):
            return KeyRange()
        if kind == "keys":
            keys = predicate.keys.keys
            if not 1 <= len(keys) <= self.limits.max_items_per_call:
                raise invalid(f"{where}.keys lists 1 to {self.limits.max_items_per_call} keys "
                              f"(limits.max_items_per_call), not {len(keys)}")  # fmt: skip
            for i, key in enumerate(keys):
                self._check_key(key, f"{where}.keys[{i}]")
            return Keys(tuple(sorted(set(keys))))
        r = predicate.range
        for name, key in (("start", r.start), ("end", r.end)):
            if len(key) > self.limits.max_key_bytes:
                raise invalid(f"{where}.range.{name} is {len(key)} bytes, over the limit of "
                              f"{self.limits.max_key_bytes} (limits.max_key_bytes)")  # fmt: skip
        if r.end and r.end <= r.start:
            raise invalid(f"{where}.range is empty: end must sort after start (or be empty: to the last key)")
        return KeyRange(r.start, r.end or None)

    def _budget(self, requested: int) -> int:
        lim = self.limits
        if requested == 0:
            return lim.default_page_bytes
        if not lim.min_page_bytes <= requested <= lim.max_page_bytes:
            raise invalid(f"page_size_bytes must be between {lim.min_page_bytes} (limits.min_page_bytes) and "
                          f"{lim.max_page_bytes} (limits.max_page_bytes), or 0 for {lim.default_page_bytes}; "
                          f"not {requested}")  # fmt: skip
        return requested


    # --- upkeep --------------------------------------------------------------------

    async def purge_forever(self) -> None:
        """Purge old tombstones and abandoned chunks every ``purge_interval_s``."""
        while True:
            await asyncio.sleep(self.config.purge_interval_s)
            await self.purge_once()

    async def purge_once(self) -> int:
        now = self._now_us()
        tombstones = now - int(self.limits.token_max_age_s * 1e6)
        staged = now - int(self.limits.staged_chunks_ttl_s * 1e6)
        total = 0
        for name, engine in self.engines.items():
            try:
                n = await engine.purge(tombstones, staged)
            except EngineError as e:
                log.warning("event=purge_failed engine=%s error=%r", name, str(e))
                continue
            total += n
            if n:
                log.info("event=purged engine=%s rows=%d", name, n)
        return total


class _EngineErrors:
    """``with _ENGINE_ERRORS:`` turns an EngineError into UNAVAILABLE, logged (a class,
    not a generator context manager: it is entered on every call)."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        if isinstance(error, EngineError):
            log.warning("event=engine_error error=%r", str(error))
            raise KvError(Code.UNAVAILABLE, f"the storage engine cannot answer now: {error}") from None


_ENGINE_ERRORS = _EngineErrors()


def _get_digest(predicate: kv_pb2.Predicate | None, with_write_times: bool) -> str:
    """What ties a GetItems page token to its read: the predicate and the options."""
    return pages.request_digest(b"get", predicate.SerializeToString(deterministic=True) if predicate else b"",
                                b"w" if with_write_times else b"")  # fmt: skip


def _changed(key: bytes) -> KvError:
    return KvError(Code.ABORTED, f"the value of key {_show(key)} changed while it was read in parts; "
                                 "read it again from the start")  # fmt: skip


def _show(key: bytes) -> str:
    text = key[:40].decode("utf-8", "backslashreplace")
    return repr(text + ("…" if len(key) > 40 else ""))

