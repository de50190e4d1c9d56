"""A client of the DAL migration contract (``dgw.migration.v1.DalMigration``,
``protos/dgw/migration/v1/migration.proto``): what the runner says to a DAL.

Every call of the contract is safe to repeat (an Import applies by version), so a call
that fails with UNAVAILABLE or DEADLINE_EXCEEDED is tried again with a growing pause,
up to ``retry_for_s``; other errors are the caller's (``DalError`` names the DAL and
the call).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Sequence
from typing import Any, TypeVar

import grpc
from google.protobuf.message import Message

from dgw_api.migration.v1 import migration_pb2 as pb

SERVICE = "/dgw.migration.v1.DalMigration/"
MAX_MESSAGE_BYTES = 64 << 20
_RETRIED = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
M = TypeVar("M", bound=Message)

Place = tuple[str, bytes]


class DalError(Exception):
    """A DAL refused a call of the contract, or could not be reached in time."""


def span(start: Place | None = None, end: Place | None = None) -> pb.Range:
    r = pb.Range()
    if start is not None:
        r.start.id, r.start.key = start
    if end is not None:
        r.end.id, r.end.key = end
    return r


def just(record_id: str, key: bytes) -> pb.Range:
    """The range holding exactly one position."""
    return span((record_id, key), (record_id, key + b"\0"))


class DalClient:
    def __init__(
        self, target: str, *, name: str = "", timeout_s: float = 60.0, retry_for_s: float = 30.0
    ) -> None:
        self.target = target
        self.name = name or target
        self.timeout_s = timeout_s
        self.retry_for_s = retry_for_s
        self._channel = grpc.aio.insecure_channel(target, options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ])  # fmt: skip

    async def close(self) -> None:
        await self._channel.close(None)

    async def __aenter__(self) -> DalClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _call(self, method: str, request: Message, kind: type[M]) -> M:
        call = self._channel.unary_unary(
            SERVICE + method, request_serializer=None, response_deserializer=None
        )
        data = request.SerializeToString()
        give_up = time.monotonic() + self.retry_for_s
        pause = 0.05
        while True:
            try:
                answer: Any = await call(data, timeout=self.timeout_s)
                return kind.FromString(answer)
            except grpc.aio.AioRpcError as e:
                if e.code() not in _RETRIED or time.monotonic() + pause > give_up:
                    raise DalError(
                        f"{self.name} ({self.target}) {method}: {e.code().name}: {e.details()}"
                    ) from None
            await asyncio.sleep(pause * (0.5 + random.random()))
            pause = min(pause * 2, 2.0)

    async def namespaces(self) -> list[str]:
        return list(
            (
                await self._call("Namespaces", pb.NamespacesRequest(), pb.NamespacesResponse)
            ).namespaces
        )

    async def export(self, namespace: str, cursor: bytes = b"", page_size_bytes: int = 0,
                     range: pb.Range | None = None) -> pb.ExportResponse:  # fmt: skip
        req = pb.ExportRequest(namespace=namespace, cursor=cursor, page_size_bytes=page_size_bytes)
        if range is not None:
            req.range.CopyFrom(range)
        return await self._call("Export", req, pb.ExportResponse)

    async def import_page(
        self, namespace: str, page: bytes, *, repair: bool = False
    ) -> pb.ImportResponse:
        return await self._call("Import", pb.ImportRequest(namespace=namespace, page=page, repair=repair),
                                pb.ImportResponse)  # fmt: skip

    async def digest(
        self, namespace: str, ranges: Sequence[pb.Range], *, count_only: bool = False
    ) -> list[pb.RangeDigest]:
        req = pb.DigestRequest(namespace=namespace, ranges=ranges, count_only=count_only)
        answer = await self._call("Digest", req, pb.DigestResponse)
        return list(answer.digests)

    async def split(self, namespace: str, range: pb.Range, parts: int) -> list[Place]:
        answer = await self._call("Split", pb.SplitRequest(namespace=namespace, range=range, parts=parts),
                                  pb.SplitResponse)  # fmt: skip
        return [(p.id, p.key) for p in answer.boundaries]

    async def entries(self, namespace: str, range: pb.Range, limit: int) -> pb.EntriesResponse:
        return await self._call("Entries", pb.EntriesRequest(namespace=namespace, range=range, limit=limit),
                                pb.EntriesResponse)  # fmt: skip
