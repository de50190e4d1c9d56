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

The same streams serve the per-type services (``ClusterDiscoveryService.StreamClusters``,
``DeltaClusters``, ... as listed in xds_protocol "RPC Services and Methods for Each
Variant"): a per-type stream is an aggregated one restricted to its type, so a
bootstrap may use either. A stream that breaks a limit of ``AdsLimits`` or sends a
request it cannot serve is ended with a gRPC status naming what to change.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeAlias

import grpc
from envoy.service.discovery.v3.discovery_pb2 import DeltaDiscoveryRequest, DiscoveryRequest

from common.budget import LogBudget
from common.text import log_value, printable
from xds_server import metrics
from xds_server.ads.delta import DeltaStream
from xds_server.ads.events import Outgoing, Received, Refused
from xds_server.ads.pacing import StartPacer
from xds_server.ads.sotw import NameSets, SotwStream
from xds_server.cache.snapshot import Snapshot
from xds_server.cache.status import StreamKind, StreamStatus
from xds_server.cache.store import SnapshotCache
from xds_server.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET, SHORT_NAMES
from xds_server.settings import AdsLimits

SERVICE = "envoy.service.discovery.v3.AggregatedDiscoveryService"
SOTW_METHOD = "StreamAggregatedResources"
DELTA_METHOD = "DeltaAggregatedResources"


@dataclass(frozen=True, slots=True)
class TypeService:
    """One per-type xDS service: its gRPC name, its methods, the type it serves."""

    name: str
    sotw_method: str
    delta_method: str
    type_url: str


TYPE_SERVICES: tuple[TypeService, ...] = (
    TypeService("envoy.service.cluster.v3.ClusterDiscoveryService", "StreamClusters", "DeltaClusters", CLUSTER),
    TypeService("envoy.service.endpoint.v3.EndpointDiscoveryService", "StreamEndpoints", "DeltaEndpoints", ENDPOINT),
    TypeService("envoy.service.listener.v3.ListenerDiscoveryService", "StreamListeners", "DeltaListeners", LISTENER),
    TypeService("envoy.service.route.v3.RouteDiscoveryService", "StreamRoutes", "DeltaRoutes", ROUTE),
    TypeService("envoy.service.secret.v3.SecretDiscoveryService", "StreamSecrets", "DeltaSecrets", SECRET),
)  # fmt: skip

log = logging.getLogger("xds_server.ads")

_Request: TypeAlias = "DiscoveryRequest | DeltaDiscoveryRequest"
_Context: TypeAlias = "grpc.aio.ServicerContext[_Request, bytes]"


class Ending(Protocol):
    @property
    def code(self) -> grpc.StatusCode: ...

    @property
    def message(self) -> str: ...


class Admission(Protocol):
    """An admitted stream's hold: ``ended`` (checked whenever the stream wakes) says
    why it must close now, ``release`` gives the hold back when it is over."""

    @property
    def ended(self) -> Ending | None: ...

    def release(self) -> None: ...


# Who may open a stream as (shard, node id), given the stream's wake-up: an admission,
# else the status and message to end it with. The server's authorization by
# certificate (and its per-identity cap, and revocations) lives behind it.
Authorize: TypeAlias = "Callable[[_Context, str, str, Callable[[], None]], tuple[grpc.StatusCode, str] | Admission]"

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


def _metric_type(type_url: str) -> str:
    # A client may ask for any type URL: metrics name ours and lump the rest.
    return SHORT_NAMES.get(type_url, "other")


def _quote(text: str) -> str:
    # Envoy's NACK messages hold spaces, quotes and newlines; keep the event on one line.
    return '"' + printable(text.replace("\\", "\\\\").replace('"', '\\"')) + '"'


_MISSING_CLUSTER = (
    "node.cluster is empty: set it to the name of the shard this node belongs to "
    "(in the Envoy bootstrap, node: {cluster: SHARD, id: NODE_ID}; or envoy --service-cluster SHARD)"
)
_MISSING_ID = (
    "node.id is empty: set it to a name unique to this node within its shard "
    "(in the Envoy bootstrap, node: {id: NODE_ID}; or envoy --service-node NODE_ID)"
)


class AdsServer:
    """Serves the cache over ADS and the per-type services. ``register`` adds them to a
    ``grpc.aio.Server``."""

    def __init__(
        self,
        cache: SnapshotCache,
        limits: AdsLimits | None = None,
        authorize: Authorize | None = None,
        pacer: StartPacer | None = None,
        counted: bool = True,
    ) -> None:
        self._cache = cache
        self._pacer = pacer if pacer is not None else StartPacer(0)
        self._limits = limits if limits is not None else AdsLimits()
        # Whether its streams count in the control plane's metrics: a sidecar's local
        # SDS server is an AdsServer too, and in `dgw up` it shares the process (and the
        # registry) with the control plane, whose /metrics must count only its own.
        self._counted = counted
        self._authorize = authorize
        self._names = NameSets()
        # Refused streams are logged, but a client retrying in a loop cannot flood the log.
        self._refusals = LogBudget(log, "unauthorized_streams")

    def register(self, server: grpc.aio.Server) -> None:
        self._add(server, SERVICE, SOTW_METHOD, DELTA_METHOD, None)
        for service in TYPE_SERVICES:
            self._add(
                server, service.name, service.sotw_method, service.delta_method, service.type_url
            )

    def _add(
        self,
        server: grpc.aio.Server,
        service: str,
        sotw_method: str,
        delta_method: str,
        only_type: str | None,
    ) -> None:
        def serve(kind: StreamKind) -> Callable[[Any, _Context], Awaitable[None]]:
            async def handler(requests: Any, context: _Context) -> None:
                await self._serve(requests, context, kind, only_type)

            return handler

        handlers = {
            sotw_method: grpc.stream_stream_rpc_method_handler(
                serve("sotw"),
                request_deserializer=DiscoveryRequest.FromString,
                response_serializer=_identity,
            ),
            delta_method: grpc.stream_stream_rpc_method_handler(
                serve("delta"),
                request_deserializer=DeltaDiscoveryRequest.FromString,
                response_serializer=_identity,
            ),
        }
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, handlers),))
        # Registered methods are matched in C-core, skipping the per-call Python lookup.
        server.add_registered_method_handlers(service, handlers)  # type: ignore[attr-defined]

    async def _serve(
        self,
        requests: AsyncIterator[_Request],
        context: _Context,
        kind: StreamKind,
        only_type: str | None,
    ) -> None:
        # The iterator itself (grpc's async generator): closed below, as it holds the
        # last request it yielded, and it sits in a reference cycle only a full
        # collection would free.
        requests = aiter(requests)
        try:
            first = await anext(requests)
        except StopAsyncIteration:
            return
        shard, node_id = sys.intern(first.node.cluster), first.node.id
        if not shard or not node_id:
            log.warning("event=rejected stream=%s reason=missing_node_identity", kind)
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, _MISSING_CLUSTER if not shard else _MISSING_ID
            )
        wake = _Waker()
        admission: Admission | None = None
        if self._authorize is not None:
            admitted = self._authorize(context, shard, node_id, wake.set)
            if isinstance(admitted, tuple):
                self._refusals.log(
                    "event=unauthorized shard=%s node=%s stream=%s code=%s message=%s",
                    log_value(shard), log_value(node_id), kind, admitted[0].name, _quote(admitted[1]),
                )  # fmt: skip
                await context.abort(*admitted)
            admission = admitted
        inbox: list[_Request] = [first]
        del first  # Envoy's Node can be kilobytes (its extension list): hold no request
        try:
            await self._pacer.admit()  # a reconnect storm waits its turn (pacing.py)
            await self._stream(requests, inbox, context, kind, only_type, shard, node_id, wake, admission)
        finally:
            if admission is not None:
                admission.release()

    async def _stream(
        self,
        requests: AsyncIterator[_Request],
        inbox: list[_Request],
        context: _Context,
        kind: StreamKind,
        only_type: str | None,
        shard: str,
        node_id: str,
        wake: _Waker,
        admission: Admission | None,
    ) -> None:
        watch = self._cache.connect(shard, node_id, kind, wake.set)
        stream: _Stream = (
            SotwStream(watch.status, self._names, self._limits)
            if kind == "sotw"
            else DeltaStream(watch.status, self._limits)
        )
        reader = asyncio.create_task(_read(requests, inbox, wake))
        log.info("event=connect shard=%s node=%s stream=%s", shard, node_id, kind)
        # Any client may name any shard: label only configured ones (bounded).
        label = shard if self._cache.shard_versions(shard) else "_unconfigured"
        connected = metrics.CONNECTED_NODES.labels(label, kind) if self._counted else None
        if connected is not None:
            connected.inc()
        reason = "closed"
        refused: Refused | None = None
        try:
            while True:
                if inbox:
                    refused = _apply(stream, inbox, shard, node_id, only_type, watch.status, self._counted)
                    if refused is not None:
                        break
                if reader.done():
                    break
                view = self._cache.view(shard, node_id)
                if view is not None:  # else the shard has no snapshot yet: wait for one
                    due = stream.pending(view)
                    watch.status.record_evaluated(view)
                    await _write(context, shard, node_id, due, self._counted)
                await wake.wait()
                ended = admission.ended if admission is not None else None
                if ended is not None:
                    refused = Refused(ended.code.name, ended.message)
                    break
            reason = f"refused:{refused.code}" if refused is not None else reader.result()
        except asyncio.CancelledError:
            reason = "cancelled"
            raise
        finally:
            reader.cancel()
            self._cache.disconnect(watch)
            if connected is not None:
                connected.dec()
            await _close(requests, reader)
            del stream  # free the stream's names before the status goes out
            log.info(
                "event=disconnect shard=%s node=%s stream=%s reason=%s",
                shard, node_id, kind, reason,
            )  # fmt: skip
        if refused is not None:
            code, message = refused.code, refused.message
            del refused
            log.warning(
                "event=refused shard=%s node=%s stream=%s code=%s message=%s",
                shard, node_id, kind, code, _quote(message),
            )  # fmt: skip
            # Set, not ``abort``: its exception's traceback would keep this frame, and
            # with it the request iterator holding the refused request, alive.
            context.set_code(grpc.StatusCode[code])
            context.set_details(message)


async def _close(requests: AsyncIterator[_Request], reader: asyncio.Task[str]) -> None:
    """Release the request iterator once the reader is done with it."""
    await asyncio.wait([reader])
    aclose = getattr(requests, "aclose", None)
    if aclose is not None:
        with contextlib.suppress(Exception):
            await aclose()


def _apply(
    stream: _Stream, inbox: list[_Request], shard: str, node_id: str, only_type: str | None,
    status: StreamStatus, counted: bool,
) -> Refused | None:  # fmt: skip
    """Hand every queued request to the stream. A function of its own so no request
    outlives it in the long-lived stream frame."""
    batch = inbox.copy()
    inbox.clear()
    try:
        for request in batch:
            if only_type is not None:
                _restrict(request, only_type)
            received = stream.on_request(request)
            _log_request(shard, node_id, received)
            if counted:
                _count(shard, received, status)
    except Refused as exc:
        # Without its traceback: the frames it holds hold the request (megabytes).
        return exc.with_traceback(None)
    return None


def _restrict(request: _Request, type_url: str) -> None:
    """A per-type stream's requests may leave ``type_url`` empty; any other type is refused."""
    if not request.type_url:
        request.type_url = type_url
    elif request.type_url != type_url:
        raise Refused(
            "INVALID_ARGUMENT",
            f"this service serves {type_url} only, not {request.type_url[:256]}: "
            "use the aggregated service for several types on one stream",
        )


async def _write(context: _Context, shard: str, node_id: str, responses: list[Outgoing], counted: bool) -> None:
    """Write in order. A function of its own so no payload outlives its write in the
    long-lived stream frame (a response can be megabytes, times thousands of streams)."""
    for out in responses:
        await context.write(out.payload)
        if counted:
            metrics.xds(shard, _metric_type(out.type_url)).pushes.inc()
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


def _count(shard: str, received: Received, status: StreamStatus) -> None:
    """Metrics of one classified request: ACKs (with the time since their push), NACKs."""
    if received.kind == "ack":
        series = metrics.xds(shard, _metric_type(received.type_url))
        series.acks.inc()
        sent_at = status.sent_at(received.type_url)
        if sent_at is not None and received.version == status.sent_version(received.type_url):
            series.latency.observe(time.monotonic() - sent_at)
    elif received.kind == "nack" and received.version:
        # Only a NACK of a response we sent (so of a configured shard: labels stay bounded).
        metrics.xds(shard, _metric_type(received.type_url)).nacks.inc()


def _log_request(shard: str, node_id: str, received: Received) -> None:
    if received.kind == "nack":
        log.info(
            "event=nack shard=%s node=%s type=%s version=%s message=%s",
            shard, node_id, _type(received.type_url), received.version,
            _quote(received.message),
        )  # fmt: skip
    elif not received.served and received.kind == "subscribe":
        log.info(
            "event=unserved_type shard=%s node=%s type=%s answer=empty",
            shard, node_id, received.type_url,
        )  # fmt: skip
    elif log.isEnabledFor(logging.DEBUG):
        log.debug(
            "event=%s shard=%s node=%s type=%s version=%s",
            received.kind, shard, node_id, _type(received.type_url), received.version,
        )  # fmt: skip
