"""A small asyncio client for etcd's v3 gRPC API: the calls the config store needs.

Why gRPC and not etcd's JSON gateway, measured (``dgw bench etcd-client``, docs/ha.md):
the generated stubs (``etcd_api``, from etcd's own .proto files) answer a put, a read
and a compare-and-set in about two thirds of the gateway's time at a similar client
CPU per operation, and a watch and a lease keep-alive are real bidirectional streams
on one HTTP/2 connection, with deadlines and cancellation, instead of chunked HTTP
responses with base64 keys and int64s as strings. PyPI's etcd clients cannot be
used: ``aetcd`` pins protobuf < 7 (xds-protos needs 7), ``etcd3`` does not import on
protobuf ≥ 4.

Endpoints: one channel per endpoint, one of them in use. A call that fails because
that member is gone, slow or without a leader moves the client to the next endpoint
for the calls after it; the call itself is *not* retried here, because a write that
timed out may still have been applied — the caller decides (the store writes with
compare-and-set and a write id, so it can tell). Watches and keep-alive streams are
opened with etcd's ``hasleader`` requirement: a member that loses its leader (a
partitioned minority) ends them instead of going silent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

import grpc

from etcd_api import kv_pb2, rpc_pb2, rpc_pb2_grpc
from xds_server.store.base import StoreError

log = logging.getLogger("xds_server.store.etcd")

T = TypeVar("T")

DEFAULT_TIMEOUT_S = 2.0
# etcd refuses client pings more often than every 5 s (--grpc-keepalive-min-time):
# at 5 s + 3 s a dead link is found within 8 s even on an idle stream.
_CHANNEL_OPTIONS = (
    ("grpc.keepalive_time_ms", 5_000),
    ("grpc.keepalive_timeout_ms", 3_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.max_send_message_length", 16 * 1024 * 1024),
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2_000),
)
_REQUIRE_LEADER = (("hasleader", "true"),)
# Errors after which another member may do better.
_MOVE_ON = frozenset({
    grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.CANCELLED, grpc.StatusCode.INTERNAL,
})  # fmt: skip


class EtcdError(StoreError):
    """etcd did not answer, or refused; the message names the member and etcd's words."""

    def __init__(self, message: str, *, code: grpc.StatusCode | None = None):
        super().__init__(message)
        self.code = code


class EtcdUnavailable(EtcdError):
    """No member answered in time (down, partitioned, or without a leader)."""


class Compacted(EtcdError):
    """A watch asked for a revision etcd has compacted away; re-list and watch again."""

    def __init__(self, compact_revision: int):
        super().__init__(f"etcd compacted its history up to revision {compact_revision}")
        self.compact_revision = compact_revision


def parse_endpoints(url: str) -> tuple[list[str], str]:
    """``etcd://h1:2379,h2:2379,h3:2379[/prefix]`` → (["h1:2379", ...], "/prefix/").
    The prefix (default ``/dgw/``) keeps several control planes apart in one etcd."""
    parts = urlsplit(url)
    if parts.scheme != "etcd" or not parts.netloc:
        raise ValueError(f"{url!r} is not an etcd URL: write etcd://HOST:PORT[,HOST:PORT...][/PREFIX]")
    endpoints = [e.strip() for e in parts.netloc.split(",") if e.strip()]
    for endpoint in endpoints:
        host, _, port = endpoint.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{url!r}: {endpoint!r} is not HOST:PORT")
    prefix = parts.path.strip("/")
    return endpoints, f"/{prefix}/" if prefix else "/dgw/"


def prefix_end(prefix: bytes) -> bytes:
    """The range end that covers every key starting with ``prefix``."""
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\0"


def put(key: bytes, value: bytes, lease: int = 0) -> rpc_pb2.RequestOp:
    return rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=key, value=value, lease=lease))


def get(key: bytes, range_end: bytes = b"", limit: int = 0) -> rpc_pb2.RequestOp:
    return rpc_pb2.RequestOp(request_range=rpc_pb2.RangeRequest(key=key, range_end=range_end, limit=limit))


def delete(key: bytes) -> rpc_pb2.RequestOp:
    return rpc_pb2.RequestOp(request_delete_range=rpc_pb2.DeleteRangeRequest(key=key))


def mod_is(key: bytes, revision: int) -> rpc_pb2.Compare:
    """The key's last change was at ``revision`` (0: the key does not exist)."""
    return rpc_pb2.Compare(result=rpc_pb2.Compare.EQUAL, target=rpc_pb2.Compare.MOD, key=key,
                           mod_revision=revision)  # fmt: skip


def absent(key: bytes) -> rpc_pb2.Compare:
    return rpc_pb2.Compare(result=rpc_pb2.Compare.EQUAL, target=rpc_pb2.Compare.CREATE, key=key,
                           create_revision=0)  # fmt: skip


@dataclass(frozen=True)
class WatchEvents:
    """One batch of a watch: the events of one or more revisions, in order."""

    revision: int  # the store's revision when etcd sent it (the header's)
    events: tuple[kv_pb2.Event, ...]


class EtcdClient:
    """Calls to an etcd cluster; ``endpoints`` are ``HOST:PORT`` strings."""

    def __init__(self, endpoints: Sequence[str], *, timeout_s: float = DEFAULT_TIMEOUT_S):
        if not endpoints:
            raise ValueError("etcd needs at least one endpoint")
        self.endpoints = list(endpoints)
        self.timeout_s = timeout_s
        self._channels = [grpc.aio.insecure_channel(_target(e), options=_CHANNEL_OPTIONS)
                          for e in self.endpoints]  # fmt: skip
        # Stubs made once per channel: making one per call doubled a call's client CPU.
        self._stubs: list[dict[type[Any], Any]] = [{} for _ in self._channels]
        self._current = 0
        self._closed = False

    @property
    def endpoint(self) -> str:
        return self.endpoints[self._current]

    def _channel(self) -> tuple[int, grpc.aio.Channel]:
        return self._current, self._channels[self._current]

    def _failed(self, index: int, error: grpc.aio.AioRpcError) -> None:
        """The member at ``index`` failed a call: use the next one from now on."""
        if error.code() in _MOVE_ON and index == self._current and len(self.endpoints) > 1:
            self._current = (index + 1) % len(self.endpoints)
            log.info("event=etcd_endpoint_changed from=%s to=%s reason=%s", self.endpoints[index],
                     self.endpoint, error.code().name)  # fmt: skip

    def _error(self, index: int, call: str, error: grpc.aio.AioRpcError) -> EtcdError:
        self._failed(index, error)
        detail = (error.details() or "").strip()
        where = self.endpoints[index]
        if error.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            return EtcdUnavailable(f"etcd {where} did not answer {call} ({error.code().name}: {detail})",
                                   code=error.code())  # fmt: skip
        return EtcdError(f"etcd {where} refused {call}: {detail or error.code().name}", code=error.code())

    async def _unary(self, service: type[Any], method: str, request: Any, timeout_s: float | None,
                     *, reads_only: bool = False) -> Any:  # fmt: skip
        """One call to the current member. A call that only reads is tried on the next
        member when this one could not be reached at all (nothing was done there)."""
        if self._closed:
            raise EtcdError("the etcd client is closed")
        tries = len(self.endpoints) if reads_only else 1
        while True:
            index = self._current
            stubs = self._stubs[index]
            stub = stubs.get(service)
            if stub is None:
                stub = stubs[service] = service(self._channels[index])
            try:
                return await getattr(stub, method)(request, timeout=timeout_s or self.timeout_s)
            except grpc.aio.AioRpcError as e:
                tries -= 1
                if tries <= 0 or e.code() != grpc.StatusCode.UNAVAILABLE or self._closed:
                    raise self._error(index, method, e) from None
                self._failed(index, e)

    # --- KV ------------------------------------------------------------------------

    async def range(self, request: rpc_pb2.RangeRequest, timeout_s: float | None = None) -> rpc_pb2.RangeResponse:
        response: rpc_pb2.RangeResponse = await self._unary(rpc_pb2_grpc.KVStub, "Range", request, timeout_s,
                                                            reads_only=True)  # fmt: skip
        return response

    async def txn(
        self,
        compare: Sequence[rpc_pb2.Compare],
        success: Sequence[rpc_pb2.RequestOp],
        failure: Sequence[rpc_pb2.RequestOp] = (),
        timeout_s: float | None = None,
    ) -> rpc_pb2.TxnResponse:
        request = rpc_pb2.TxnRequest(compare=compare, success=success, failure=failure)
        reads_only = all(op.HasField("request_range") for op in (*success, *failure))
        response: rpc_pb2.TxnResponse = await self._unary(rpc_pb2_grpc.KVStub, "Txn", request, timeout_s,
                                                          reads_only=reads_only)  # fmt: skip
        return response

    async def put(self, key: bytes, value: bytes, lease: int = 0) -> rpc_pb2.PutResponse:
        request = rpc_pb2.PutRequest(key=key, value=value, lease=lease)
        response: rpc_pb2.PutResponse = await self._unary(rpc_pb2_grpc.KVStub, "Put", request, None)
        return response

    async def delete_range(self, key: bytes, range_end: bytes = b"") -> rpc_pb2.DeleteRangeResponse:
        request = rpc_pb2.DeleteRangeRequest(key=key, range_end=range_end)
        response: rpc_pb2.DeleteRangeResponse = await self._unary(
            rpc_pb2_grpc.KVStub, "DeleteRange", request, None)
        return response

    # --- leases --------------------------------------------------------------------

    async def lease_grant(self, ttl_s: int) -> int:
        response = await self._unary(rpc_pb2_grpc.LeaseStub, "LeaseGrant",
                                     rpc_pb2.LeaseGrantRequest(TTL=ttl_s), None)  # fmt: skip
        if response.error:
            raise EtcdError(f"etcd {self.endpoint} refused a lease: {response.error}")
        return int(response.ID)

    async def lease_revoke(self, lease: int) -> None:
        with contextlib.suppress(EtcdError):  # an expired lease is as good as revoked
            await self._unary(rpc_pb2_grpc.LeaseStub, "LeaseRevoke", rpc_pb2.LeaseRevokeRequest(ID=lease), None)

    def keep_alive(self) -> LeaseKeeper:
        """A keep-alive stream for any number of leases (one per call of ``refresh``)."""
        return LeaseKeeper(self)

    # --- watches -------------------------------------------------------------------

    async def watch(self, key: bytes, range_end: bytes, start_revision: int) -> AsyncGenerator[WatchEvents]:
        """Every change of ``[key, range_end)`` from ``start_revision`` on, in order,
        until the stream breaks (``EtcdError``; resume from the last revision seen + 1)
        or the revision was compacted (``Compacted``)."""
        index, channel = self._channel()
        requests: asyncio.Queue[rpc_pb2.WatchRequest | None] = asyncio.Queue()
        create = rpc_pb2.WatchCreateRequest(key=key, range_end=range_end, start_revision=start_revision,
                                            progress_notify=True)  # fmt: skip
        await requests.put(rpc_pb2.WatchRequest(create_request=create))

        async def outgoing() -> AsyncIterator[rpc_pb2.WatchRequest]:
            while (request := await requests.get()) is not None:
                yield request

        call = rpc_pb2_grpc.WatchStub(channel).Watch(  # type: ignore[no-untyped-call]
            outgoing(), metadata=_REQUIRE_LEADER)
        try:
            async for response in call:
                if response.compact_revision:
                    raise Compacted(int(response.compact_revision))
                if response.canceled:
                    raise EtcdUnavailable(f"etcd {self.endpoints[index]} ended a watch: "
                                          f"{response.cancel_reason or 'no reason given'}")  # fmt: skip
                if response.events:
                    yield WatchEvents(int(response.header.revision), tuple(response.events))
            raise EtcdUnavailable(f"etcd {self.endpoints[index]} closed a watch")
        except grpc.aio.AioRpcError as e:
            if e.code() == grpc.StatusCode.CANCELLED and self._closed:
                return
            raise self._error(index, "Watch", e) from None
        except asyncio.CancelledError:
            # Closing the channel cancels the call: that ends the watch, not our task.
            task = asyncio.current_task()
            if self._closed and not (task is not None and task.cancelling()):
                return
            raise
        finally:
            await requests.put(None)
            call.cancel()

    async def status(self, timeout_s: float | None = None) -> rpc_pb2.StatusResponse:
        response: rpc_pb2.StatusResponse = await self._unary(
            rpc_pb2_grpc.MaintenanceStub, "Status", rpc_pb2.StatusRequest(), timeout_s)
        return response

    async def close(self) -> None:
        self._closed = True
        for channel in self._channels:
            await channel.close(None)


class LeaseKeeper:
    """One LeaseKeepAlive stream: ``refresh(lease)`` sends a keep-alive and returns the
    lease's remaining TTL (0: it has expired). Reopened on the current endpoint after a
    failure."""

    def __init__(self, client: EtcdClient):
        self._client = client
        self._queue: asyncio.Queue[int | None] | None = None
        self._call: Any = None
        self._index = 0
        self._lock = asyncio.Lock()

    async def refresh(self, lease: int, timeout_s: float | None = None) -> int:
        async with self._lock:  # one request in flight: responses pair with requests
            if self._call is None:
                self._open()
            assert self._queue is not None
            await self._queue.put(lease)
            try:
                async with asyncio.timeout(timeout_s or self._client.timeout_s):
                    response = await self._call.read()
            except TimeoutError:
                self.close()
                raise EtcdUnavailable(f"etcd {self._client.endpoints[self._index]} did not answer "
                                      "a lease keep-alive in time") from None  # fmt: skip
            except grpc.aio.AioRpcError as e:
                self.close()
                raise self._client._error(self._index, "LeaseKeepAlive", e) from None
            if response is grpc.aio.EOF:  # type: ignore[attr-defined]
                self.close()
                raise EtcdUnavailable(f"etcd {self._client.endpoints[self._index]} ended a keep-alive stream")
            return int(response.TTL)

    def _open(self) -> None:
        self._index, channel = self._client._channel()
        queue: asyncio.Queue[int | None] = asyncio.Queue()
        self._queue = queue

        async def outgoing() -> AsyncIterator[rpc_pb2.LeaseKeepAliveRequest]:
            while (lease := await queue.get()) is not None:
                yield rpc_pb2.LeaseKeepAliveRequest(ID=lease)

        self._call = rpc_pb2_grpc.LeaseStub(channel).LeaseKeepAlive(  # type: ignore[no-untyped-call]
            outgoing(), metadata=_REQUIRE_LEADER)

    def close(self) -> None:
        if self._queue is not None:
            self._queue.put_nowait(None)
        if self._call is not None:
            self._call.cancel()
        self._call = self._queue = None


def _target(endpoint: str) -> str:
    host, _, port = endpoint.rpartition(":")
    host = host.strip("[]")
    if ":" in host:
        return f"ipv6:[{host}]:{port}"
    if host.replace(".", "").isdigit():
        return f"ipv4:{host}:{port}"
    return f"dns:///{host}:{port}"
