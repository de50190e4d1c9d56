"""The ADS gRPC service: StreamAggregatedResources (state of the world) and
DeltaAggregatedResources (incremental), over the snapshot cache.

Each stream is served by its RPC's own task plus one reader task. The reader parses
requests (upb ``FromString``) into an inbox and wakes the stream; the cache wakes it
on changes to its shard or its own endpoints. On each wake the stream handles every
queued request, then reads the node's current view once and writes whatever is due,
so a burst of edits collapses into one push of the latest state. Responses are bytes
assembled by ``wire`` and pass through an identity serializer.

Logs are one key=value line per event, with shard, node, type and version on every
xDS line: INFO for connect, disconnect and NACK, DEBUG for each request and push.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import AsyncIterator
from typing import Any, Protocol

import grpc
from envoy.service.discovery.v3.discovery_pb2 import DeltaDiscoveryRequest, DiscoveryRequest

from xds_server.ads.delta import DeltaStream
from xds_server.ads.events import Outgoing, Received
from xds_server.ads.sotw import NameSets, SotwStream
from xds_server.cache.snapshot import Snapshot
from xds_server.cache.status import StreamKind
from xds_server.cache.store import SnapshotCache
from xds_server.resources import SHORT_NAMES

SERVICE = "envoy.service.discovery.v3.AggregatedDiscoveryService"
SOTW_METHOD = "StreamAggregatedResources"
DELTA_METHOD = "DeltaAggregatedResources"

log = logging.getLogger("xds_server.ads")

_Request = DiscoveryRequest | DeltaDiscoveryRequest

# Options for the grpc.aio.Server that serves a fleet. When the control plane
# restarts, every node reconnects at once; gRPC's default limits on calls the
# application has not yet picked up (1,000 soft, 3,000 hard) cancel the excess calls of
# that storm. Measured: 5,000 nodes connecting together lose calls with the defaults,
# none with these.
SERVER_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.server.max_pending_requests", 20_000),
    ("grpc.server.max_pending_requests_hard_limit", 40_000),
    # BDP probing sizes the window of what the server *receives* (here only small
    # requests) by sending a PING after received data: an extra frame out and in per
    # ACK. Off, an edit to 5,000 nodes costs a third less server CPU (0.97 → 0.63 s).
    ("grpc.http2.bdp_probe", 0),
)

# Requests queued but not yet handled. Envoy sends one per response it gets, so a
# stream this far behind is a client flooding us; it is closed rather than buffered.
_INBOX_LIMIT = 1024


class _Stream(Protocol):
    # ``Any``: each kind takes its own request type, and the server pairs them.
    def on_request(self, request: Any, /) -> Received: ...

    def pending(self, view: Snapshot, /) -> list[Outgoing]: ...


def _identity(payload: bytes) -> bytes:
    return payload


def _type(type_url: str) -> str:
    return SHORT_NAMES.get(type_url, type_url)


def _quote(text: str) -> str:
    # Envoy's NACK messages hold spaces, quotes and newlines; keep the event on one line.
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


class AdsServer:
    """Serves the cache over ADS. ``register`` adds the service to a ``grpc.aio.Server``."""

    def __init__(self, cache: SnapshotCache) -> None:
        self._cache = cache
        self._names = NameSets()

    def register(self, server: grpc.aio.Server) -> None:
        handlers = {
            SOTW_METHOD: grpc.stream_stream_rpc_method_handler(
                self._serve_sotw,
                request_deserializer=DiscoveryRequest.FromString,
                response_serializer=_identity,
            ),
            DELTA_METHOD: grpc.stream_stream_rpc_method_handler(
                self._serve_delta,
                request_deserializer=DeltaDiscoveryRequest.FromString,
                response_serializer=_identity,
            ),
        }
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
        # Registered methods are matched in C-core, skipping the per-call Python lookup.
        server.add_registered_method_handlers(SERVICE, handlers)

    async def _serve_sotw(
        self, requests: AsyncIterator[DiscoveryRequest], context: grpc.aio.ServicerContext
    ) -> None:
        await self._serve(requests, context, "sotw")

    async def _serve_delta(
        self, requests: AsyncIterator[DeltaDiscoveryRequest], context: grpc.aio.ServicerContext
    ) -> None:
        await self._serve(requests, context, "delta")

    async def _serve(
        self,
        requests: AsyncIterator[_Request],
        context: grpc.aio.ServicerContext,
        kind: StreamKind,
    ) -> None:
        try:
            first = await anext(requests)
        except StopAsyncIteration:
            return
        shard, node_id = sys.intern(first.node.cluster), first.node.id
        if not shard or not node_id:
            log.warning("event=rejected stream=%s reason=missing_node_identity", kind)
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                "the first request must carry node.cluster (the shard) and node.id",
            )
        wake = _Waker()
        watch = self._cache.connect(shard, node_id, kind, wake.set)
        stream: _Stream = (
            SotwStream(watch.status, self._names) if kind == "sotw" else DeltaStream(watch.status)
        )
        inbox: list[_Request] = [first]
        del first  # Envoy's Node can be kilobytes (its extension list): hold no request
        reader = asyncio.create_task(_read(requests, inbox, wake))
        log.info("event=connect shard=%s node=%s stream=%s", shard, node_id, kind)
        reason = "closed"
        try:
            while True:
                if inbox:
                    batch = inbox.copy()
                    inbox.clear()
                    for request in batch:
                        _log_request(shard, node_id, stream.on_request(request))
                    del batch, request
                if reader.done():
                    break
                view = self._cache.view(shard, node_id)
                if view is not None:  # else the shard has no snapshot yet: wait for one
                    await _write(context, shard, node_id, stream.pending(view))
                await wake.wait()
            reason = reader.result()
        except asyncio.CancelledError:
            reason = "cancelled"
            raise
        finally:
            reader.cancel()
            self._cache.disconnect(watch)
            log.info(
                "event=disconnect shard=%s node=%s stream=%s reason=%s",
                shard, node_id, kind, reason,
            )  # fmt: skip


async def _write(
    context: grpc.aio.ServicerContext, shard: str, node_id: str, responses: list[Outgoing]
) -> None:
    """Write in order. A function of its own so no payload outlives its write in the
    long-lived stream frame (a response can be megabytes, times thousands of streams)."""
    for out in responses:
        await context.write(out.payload)
        log.debug(
            "event=push shard=%s node=%s type=%s version=%s nonce=%s "
            "resources=%d removed=%d bytes=%d",
            shard, node_id, _type(out.type_url), out.version, out.nonce,
            out.resources, out.removed, len(out.payload),
        )  # fmt: skip


async def _read(requests: AsyncIterator[_Request], inbox: list[_Request], wake: _Waker) -> str:
    """Queue every request and wake the stream; return why input ended (and wake it)."""
    try:
        async for request in requests:
            if len(inbox) >= _INBOX_LIMIT:
                return "inbox_overflow"
            inbox.append(request)
            del request  # not held while waiting for the next one
            wake.set()
        return "closed"
    except Exception as exc:  # a broken stream ends this stream only, and is logged
        return f"read_error:{type(exc).__name__}"
    finally:
        wake.set()


class _Waker:
    """A one-waiter ``asyncio.Event`` that clears itself when waited: without the
    Event's deque of waiters, as each of thousands of streams holds one."""

    __slots__ = ("_future", "_loop", "_set")

    def __init__(self) -> None:
        self._set = False
        self._future: asyncio.Future[None] | None = None
        # Looked up once: get_running_loop() costs a getpid() system call each time.
        self._loop = asyncio.get_running_loop()

    def set(self) -> None:
        self._set = True
        future = self._future
        if future is not None and not future.done():
            future.set_result(None)

    async def wait(self) -> None:
        if not self._set:
            self._future = self._loop.create_future()
            try:
                await self._future
            finally:
                self._future = None
        self._set = False


def _log_request(shard: str, node_id: str, received: Received) -> None:
    if received.kind == "nack":
        log.info(
            "event=nack shard=%s node=%s type=%s version=%s message=%s",
            shard, node_id, _type(received.type_url), received.version,
            _quote(received.message),
        )  # fmt: skip
    elif received.kind == "unknown_type":
        log.warning(
            "event=unknown_type shard=%s node=%s type=%s version=%s",
            shard, node_id, received.type_url, received.version,
        )  # fmt: skip
    elif log.isEnabledFor(logging.DEBUG):
        log.debug(
            "event=%s shard=%s node=%s type=%s version=%s",
            received.kind, shard, node_id, _type(received.type_url), received.version,
        )  # fmt: skip
