"""``dgw.kv.v1.KeyValue`` over gRPC, plus the standard health service.

Requests arrive as bytes and are parsed here, so a request that is not a valid message
(a string that is not UTF-8, say) is answered with ``INVALID_ARGUMENT`` saying so,
rather than gRPC's own "Exception deserializing request" (``INTERNAL``). GetItems
answers with the bytes the service made (or the cache kept), unparsed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.protobuf.message import DecodeError, Message
from google.protobuf.wrappers_pb2 import BytesValue

from .errors import Code, KvError
from .service import CANCELLED, OK, UNKNOWN, KvService
from .v1 import kv_pb2

SERVICE = "dgw.kv.v1.KeyValue"
HEALTH = "grpc.health.v1.Health"
_SERVING = b"\x08\x01"  # grpc.health.v1.HealthCheckResponse{status: SERVING}
STATUS = {
    Code.INVALID_ARGUMENT: grpc.StatusCode.INVALID_ARGUMENT,
    Code.FAILED_PRECONDITION: grpc.StatusCode.FAILED_PRECONDITION,
    Code.ABORTED: grpc.StatusCode.ABORTED,
    Code.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
}
M = TypeVar("M", bound=Message)
Context = grpc.aio.ServicerContext[bytes, bytes]


def parse(kind: type[M], data: bytes) -> M:
    """``data`` as a ``kind`` message, or INVALID_ARGUMENT naming what is wrong."""
    try:
        return kind.FromString(data)
    except DecodeError as e:
        try:
            BytesValue.FromString(data).value.decode("utf-8")  # field 1 is every request's namespace
        except UnicodeDecodeError:
            raise KvError(Code.INVALID_ARGUMENT, "namespace is not valid UTF-8") from None
        except DecodeError:
            pass
        raise KvError(Code.INVALID_ARGUMENT, f"the request is not a valid {kind.DESCRIPTOR.full_name} "
                                             f"(a string that is not UTF-8, or not protobuf at all): {e}") from None  # fmt: skip


def _deadline(context: Context) -> float | None:
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


def unary(service: KvService, key: str, call: Callable[[bytes, Context], Awaitable[bytes]], *,
          faults: bool = True) -> Any:  # fmt: skip
    """A unary method on raw bytes: counted under ``key`` (received, then how it ended),
    a KvError answered with its status; with ``faults``, refused while the test fault
    switch says so (``faults.py``)."""

    async def run(request: bytes, context: Context) -> bytes:
        service.counters[key] += 1
        outcome = UNKNOWN
        try:
            if faults:
                service.faults.check()
            answer = await call(request, context)
            outcome = OK
            return answer
        except KvError as e:
            outcome = e.code.value
            service.counters[f"error.{outcome}"] += 1
            await context.abort(STATUS[e.code], e.message)
            raise  # abort raises; this keeps the type checker sure of it
        except asyncio.CancelledError:
            outcome = CANCELLED
            raise
        finally:
            service.call_ended(key, outcome)

    return grpc.unary_unary_rpc_method_handler(run, request_deserializer=None, response_serializer=None)


def handler(service: KvService) -> grpc.GenericRpcHandler[bytes, bytes]:
    def method(name: str, call: Callable[[bytes, Context], Awaitable[bytes]]) -> Any:
        return unary(service, f"grpc.{name}", call)

    async def put(data: bytes, _: Context) -> bytes:
        return (await service.put_items(parse(kv_pb2.PutItemsRequest, data), len(data))).SerializeToString()

    async def delete(data: bytes, _: Context) -> bytes:
        return (await service.delete_items(parse(kv_pb2.DeleteItemsRequest, data), len(data))).SerializeToString()

    async def mutate(data: bytes, _: Context) -> bytes:
        return (await service.mutate_items(parse(kv_pb2.MutateItemsRequest, data), len(data))).SerializeToString()

    async def get(data: bytes, context: Context) -> bytes:
        return await service.get_items(parse(kv_pb2.GetItemsRequest, data), len(data), _deadline(context))

    async def scan(data: bytes, context: Context) -> bytes:
        response = await service.scan_items(parse(kv_pb2.ScanItemsRequest, data), len(data), _deadline(context))
        return response.SerializeToString()

    return grpc.method_handlers_generic_handler(SERVICE, {
        "PutItems": method("PutItems", put),
        "GetItems": method("GetItems", get),
        "DeleteItems": method("DeleteItems", delete),
        "MutateItems": method("MutateItems", mutate),
        "ScanItems": method("ScanItems", scan),
    })  # fmt: skip


def health_handler() -> grpc.GenericRpcHandler[bytes, bytes]:
    """``grpc.health.v1.Health/Check``: SERVING while the process serves (written by
    hand: one constant answer does not need the grpcio-health-checking package)."""

    async def check(_: bytes, __: Context) -> bytes:
        return _SERVING

    return grpc.method_handlers_generic_handler(HEALTH, {
        "Check": grpc.unary_unary_rpc_method_handler(check, request_deserializer=None, response_serializer=None),
    })  # fmt: skip
