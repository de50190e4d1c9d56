"""The DAL migration contract (``dgw.migration.v1.DalMigration``, defined by the platform
in ``protos/dgw/migration/v1/migration.proto``) served by the Key-Value DAL, on the same
gRPC server as its API: what ``dgw migrate backfill|verify`` uses to copy a namespace
to another DAL and to compare the two without copying.

- ``Export`` pages live items in (id, key) order with their ORIGINAL versions; a value
  in chunks goes out as its chunks then a commit (split across pages when large), so a
  page stays near its byte budget whatever the value sizes.
- ``Import`` applies a page by last writer wins on those versions (``engines/base.py``):
  a copy never overwrites a newer write or a newer tombstone, and a page imported twice
  changes nothing. Chunks are staged and committed under their version, as a chunked
  put is.
- ``Digest``, ``Split`` and ``Entries`` are computed by the engine (in SQL on
  PostgreSQL), so a verify moves counts and hashes, not data.

Requests arrive as bytes (like ``grpc_api``); errors are the DAL's ``KvError`` codes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from . import pages
from .engines import Keys, Version
from .engines.base import CommitOutcome, Copied, Place, Span, StoredItem
from .errors import Code, invalid
from .grpc_api import Context, parse, unary
from .migration.v1 import migration_pb2 as pb
from .service import _ENGINE_ERRORS, KvService, Namespace

SERVICE = "dgw.migration.v1.DalMigration"
"""The contract's service name (the DAL's generated copy has a package of its own)."""
DEFAULT_PAGE_BYTES = 1 << 20
MAX_PAGE_BYTES = 16 << 20
IMPORT_BATCH = 1000
"""Items per engine transaction on import (each takes its records' locks)."""
MAX_SPLIT_PARTS = 4096
MAX_ENTRIES = 100_000
MAX_DIGEST_RANGES = 4096
_EXPORT_DIGEST = pages.request_digest(b"export")


def _place(p: pb.Position) -> Place:
    return (p.id, p.key)


def _span(r: pb.Range) -> Span:
    return Span(
        _place(r.start) if r.HasField("start") else None,
        _place(r.end) if r.HasField("end") else None,
    )


class MigrationService:
    def __init__(self, kv: KvService) -> None:
        self.kv = kv

    def _namespace(self, name: str) -> Namespace:
        return self.kv._namespace(name)

    async def namespaces(self, _: pb.NamespacesRequest) -> pb.NamespacesResponse:
        return pb.NamespacesResponse(namespaces=sorted(self.kv.namespaces))

    async def export(self, req: pb.ExportRequest) -> pb.ExportResponse:
        ns = self._namespace(req.namespace)
        budget = req.page_size_bytes or DEFAULT_PAGE_BYTES
        if budget > MAX_PAGE_BYTES:
            raise invalid(f"page_size_bytes is at most {MAX_PAGE_BYTES}, not {budget}")
        span = _span(req.range)
        after: Place | None = None
        resume: pages.Position | None = None
        if req.cursor:
            resume = pages.decode(req.cursor, field="cursor", namespace=ns.name, record_id="",
                                  digest=_EXPORT_DIGEST).position  # fmt: skip
            after = (resume.record_id, resume.key)
        page = pb.ExportPage()
        out = pb.ExportResponse()
        used = count = 0
        limit = 256
        with _ENGINE_ERRORS:
            if resume is not None and resume.version is not None:
                # The rest of a value in chunks that the last page began.
                items = await ns.engine.read_items(
                    ns.name, resume.record_id, Keys((resume.key,)), None, 1
                )
                if items and items[0].version == resume.version:
                    used, cont = await self._chunks(
                        ns, page, out, resume.record_id, items[0], resume.offset, budget, 0
                    )
                    if cont is not None:
                        return self._answer(out, page, ns, cont, used, out.items)
                    count = out.items
                # else: replaced since (a newer write, which reached the target itself)
            items_of: Any = None  # the page's last record's items (one lookup per record)
            last_id: str | None = None
            while True:
                rows = await ns.engine.export(ns.name, after, span, limit)
                for rid, item in rows:
                    cost = len(item.key) + item.size
                    if used and used + cost > budget:
                        return self._answer(out, page, ns, pages.Position(*after) if after else None, used, count)
                    if item.value is not None:
                        if rid != last_id:
                            items_of, last_id = _record(page, rid).items, rid
                        items_of.add(key=item.key, value=item.value, write_time_us=item.version.write_time_us,
                                     writer=item.version.writer)  # fmt: skip
                        used += cost
                        count += 1
                    else:
                        out.items = count
                        used, cont = await self._chunks(ns, page, out, rid, item, 0, budget, used)
                        count, last_id = out.items, None
                        if cont is not None:
                            return self._answer(out, page, ns, cont, used, count)
                    after = (rid, item.key)
                if len(rows) < limit:
                    return self._answer(out, page, ns, None, used, count)
                limit = min(limit * 2, 4096)

    async def _chunks(
        self, ns: Namespace, page: pb.ExportPage, out: pb.ExportResponse, rid: str, item: StoredItem,
        first: int, budget: int, used: int,
    ) -> tuple[int, pages.Position | None]:  # fmt: skip
        """Chunks ``first``.. of a chunked value, then its commit, as far as the page's
        budget goes (at least one chunk); where to go on if not all went."""
        count = item.chunks
        v = item.version
        index = first
        while index < count:
            if used and used + item.chunk_size > budget:
                return used, pages.Position(rid, item.key, index, v)
            data = await ns.engine.read_chunks(ns.name, rid, item.key, v, index, index)
            if data is None:
                return used, None  # replaced meanwhile: the newer write reached the target itself
            _record(page, rid).items.add(key=item.key, value=data[0], write_time_us=v.write_time_us, writer=v.writer,
                                         chunk=pb.Chunk(index=index, count=count, total_size=item.size,
                                                        chunk_size=item.chunk_size))  # fmt: skip
            used += len(data[0]) + len(item.key)
            index += 1
        _record(page, rid).items.add(key=item.key, write_time_us=v.write_time_us, writer=v.writer,
                                     chunk=pb.Chunk(index=count, count=count, total_size=item.size,
                                                    chunk_size=item.chunk_size))  # fmt: skip
        out.items += 1
        return used, None

    @staticmethod
    def _answer(
        out: pb.ExportResponse, page: pb.ExportPage, ns: Namespace, nxt: pages.Position | None, used: int,
        count: int,
    ) -> pb.ExportResponse:  # fmt: skip
        out.page = page.SerializeToString()
        out.items = count
        out.size_bytes = used
        if nxt is not None:
            out.next_cursor = pages.encode(pages.PageToken(ns.name, "", _EXPORT_DIGEST, nxt))
        return out

    async def import_page(self, req: pb.ImportRequest) -> pb.ImportResponse:
        ns = self._namespace(req.namespace)
        try:
            page = pb.ExportPage.FromString(req.page)
        except Exception as e:
            raise invalid(f"page is not an ExportPage: {e}") from None
        latest: dict[Place, Copied] = {}
        chunked: list[tuple[str, pb.ExportItem]] = []
        for r in page.records:
            self.kv._check_id(r.id)
            for item in r.items:
                if len(item.writer) != 16 or item.write_time_us <= 0:
                    raise invalid(
                        f"record {r.id!r}: every item carries its write time and 16-byte writer id"
                    )
                if item.HasField("chunk"):
                    chunked.append((r.id, item))
                    continue
                copied = Copied(r.id, item.key, None if item.deleted else item.value,
                                Version(item.write_time_us, item.writer))  # fmt: skip
                seen = latest.get((r.id, item.key))
                if seen is None or seen.version < copied.version:
                    latest[(r.id, item.key)] = copied
        items = list(latest.values())
        applied = skipped = 0
        with _ENGINE_ERRORS:
            for i in range(0, len(items), IMPORT_BATCH):
                batch = items[i : i + IMPORT_BATCH]
                n = await ns.engine.import_items(ns.name, batch, req.repair)
                applied += n
                skipped += len(batch) - n
            now = self.kv._now_us()
            for rid, item in chunked:
                v = Version(item.write_time_us, item.writer)
                c = item.chunk
                if c.index < c.count:
                    late = await ns.engine.stage_chunks(
                        ns.name, rid, item.key, v, [(c.index, item.value)], now
                    )
                    applied += late is CommitOutcome.APPLIED
                else:
                    outcome = await ns.engine.commit_chunks(
                        ns.name, rid, item.key, v, c.count, c.total_size
                    )
                    applied += outcome is CommitOutcome.APPLIED
                    skipped += outcome is CommitOutcome.SUPERSEDED
        if self.kv.cache is not None and ns.cache_ttl_s and applied:
            for rid in {c.record_id for c in items} | {rid for rid, _ in chunked}:
                await self.kv.cache.invalidate(ns.name, rid, ns.cache_ttl_s)
        self.kv.counters["items_imported"] += applied
        return pb.ImportResponse(applied=applied, skipped_as_older=skipped)

    async def digest(self, req: pb.DigestRequest) -> pb.DigestResponse:
        ns = self._namespace(req.namespace)
        if not 1 <= len(req.ranges) <= MAX_DIGEST_RANGES:
            raise invalid(f"a digest covers 1 to {MAX_DIGEST_RANGES} ranges, not {len(req.ranges)}")
        with _ENGINE_ERRORS:
            found = await ns.engine.digest(ns.name, [_span(r) for r in req.ranges], req.count_only)
        return pb.DigestResponse(digests=[pb.RangeDigest(count=n, hash=h) for n, h in found])

    async def split(self, req: pb.SplitRequest) -> pb.SplitResponse:
        ns = self._namespace(req.namespace)
        if not 2 <= req.parts <= MAX_SPLIT_PARTS:
            raise invalid(f"parts is 2 to {MAX_SPLIT_PARTS}, not {req.parts}")
        with _ENGINE_ERRORS:
            found = await ns.engine.split(ns.name, _span(req.range), req.parts)
        return pb.SplitResponse(boundaries=[pb.Position(id=i, key=k) for i, k in found])

    async def entries(self, req: pb.EntriesRequest) -> pb.EntriesResponse:
        ns = self._namespace(req.namespace)
        if not 1 <= req.limit <= MAX_ENTRIES:
            raise invalid(f"limit is 1 to {MAX_ENTRIES}, not {req.limit}")
        with _ENGINE_ERRORS:
            found = await ns.engine.entries(ns.name, _span(req.range), req.limit + 1)
        out = pb.EntriesResponse(truncated=len(found) > req.limit)
        for e in found[: req.limit]:
            out.entries.add(id=e.record_id, key=e.key, write_time_us=e.version.write_time_us, writer=e.version.writer,
                            value_hash=e.hash, size=e.size)  # fmt: skip
        return out


def _record(page: pb.ExportPage, rid: str) -> pb.ExportRecord:
    if not page.records or page.records[-1].id != rid:
        return page.records.add(id=rid)
    return page.records[-1]


def handler(kv: KvService) -> grpc.GenericRpcHandler[bytes, bytes]:
    service = MigrationService(kv)

    def method(name: str, kind: type[Any], call: Callable[[Any], Awaitable[Any]]) -> Any:
        async def run(data: bytes, _: Context) -> bytes:
            answer = await call(parse(kind, data))
            return bytes(answer.SerializeToString())

        return unary(kv, f"migration.{name}", run, faults=False)

    return grpc.method_handlers_generic_handler(SERVICE, {
        "Namespaces": method("Namespaces", pb.NamespacesRequest, service.namespaces),
        "Export": method("Export", pb.ExportRequest, service.export),
        "Import": method("Import", pb.ImportRequest, service.import_page),
        "Digest": method("Digest", pb.DigestRequest, service.digest),
        "Split": method("Split", pb.SplitRequest, service.split),
        "Entries": method("Entries", pb.EntriesRequest, service.entries),
    })  # fmt: skip


__all__ = ["SERVICE", "Code", "MigrationService", "handler"]
