"""The same calls over HTTP/JSON (aiohttp), for clients without gRPC.

Bodies and answers are the ``dgw.kv.v1`` messages in proto3's JSON mapping (bytes as
standard base64); the namespace and id come from the path, percent-encoded UTF-8.
Reads are GETs, so a ``read-only`` consumer may make them through an ``authz`` listener:

| method and path | call | fields |
|---|---|---|
| ``GET /v1/NS/ID`` | GetItems | query: ``key`` (repeated), ``start``, ``end`` (base64), ``page_size_bytes``, ``page_token``, ``with_write_times``, ``timeout_ms`` |
| ``PUT /v1/NS/ID`` | PutItems | body: ``{"items": [{"key", "value"}], "idempotencyToken": {...}}`` |
| ``DELETE /v1/NS/ID`` | DeleteItems | body: ``{"predicate": ..., "idempotencyToken": ...}`` |
| ``POST /v1/NS/ID/mutate`` | MutateItems | body: ``{"mutations": [...], "idempotencyToken": ...}`` |
| ``GET /v1/NS`` | ScanItems | query: ``cursor``, ``page_size_bytes``, ``with_write_times``, ``timeout_ms`` |
| ``GET /health``, ``GET /stats``, ``GET /`` | health, counters, what this is | |

Errors are ``{"error": {"code": "INVALID_ARGUMENT", "message": "..."}}`` with status
400, 412 (FAILED_PRECONDITION), 409 (ABORTED) or 503 (UNAVAILABLE). A read's deadline
is ``timeout_ms`` or Envoy's ``x-envoy-expected-rq-timeout-ms``, whichever is sooner.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from aiohttp import web
from google.protobuf import json_format
from google.protobuf.message import Message

from .errors import HTTP_STATUS, KvError, invalid
from .service import CANCELLED, OK, UNKNOWN, KvService
from .v1 import kv_pb2

M = TypeVar("M", bound=Message)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _error(e: KvError) -> web.Response:
    return web.json_response({"error": {"code": e.code.value, "message": e.message}}, status=HTTP_STATUS[e.code])


def _path_part(request: web.Request, index: int, name: str) -> str:
    """The ``index``-th segment of the raw path, percent-decoded, as strict UTF-8."""
    segments = request.raw_path.split("?", 1)[0].split("/")
    try:
        return urllib.parse.unquote_to_bytes(segments[index]).decode("utf-8")
    except UnicodeDecodeError:
        raise invalid(f"{name} is not valid UTF-8") from None


def _b64(value: str, name: str) -> bytes:
    """Standard or URL-safe base64, padded or not (a query string may turn '+' into ' ')."""
    value = value.replace(" ", "+")
    try:
        return base64.b64decode(value + "=" * (-len(value) % 4), altchars=b"-_" if "-" in value or "_" in value else None,
                                validate=True)  # fmt: skip
    except (binascii.Error, ValueError):
        raise invalid(f"{name} must be base64") from None


def _int(request: web.Request, name: str) -> int:
    value = request.query.get(name, "0")
    if not value.isdigit() or len(value) > 12:
        raise invalid(f"{name} must be a whole number")
    return int(value)


def _deadline(request: web.Request) -> float | None:
    limits = [_int(request, "timeout_ms")] if "timeout_ms" in request.query else []
    envoy = request.headers.get("x-envoy-expected-rq-timeout-ms", "")
    if envoy.isdigit():
        limits.append(int(envoy))
    return time.monotonic() + min(limits) / 1000 if limits else None


async def _body(request: web.Request, kind: type[M]) -> M:
    raw = await request.read()
    try:
        data = json.loads(raw) if raw else {}
    except (UnicodeDecodeError, ValueError) as e:
        raise invalid(f"the body is not JSON in UTF-8: {e}") from None
    if not isinstance(data, dict):
        raise invalid(f"the body must be a JSON object ({kind.DESCRIPTOR.full_name})")
    message = kind()
    try:
        json_format.ParseDict(data, message, ignore_unknown_fields=False)
    except json_format.ParseError as e:
        raise invalid(f"the body is not a {kind.DESCRIPTOR.full_name}: {e}") from None
    return message


def _json(message: Message) -> web.Response:
    return web.json_response(json_format.MessageToDict(message), dumps=lambda d: json.dumps(d, separators=(",", ":")))


def app(service: KvService, dal: str, listener: str) -> web.Application:
    def errors(fn: Callable[[web.Request], Awaitable[web.Response]], name: str) -> Handler:
        key = f"http.{name}"

        async def run(request: web.Request) -> web.Response:
            service.counters[key] += 1
            outcome = UNKNOWN
            try:
                service.faults.check()
                answer = await fn(request)
                outcome = OK
                return answer
            except KvError as e:
                outcome = e.code.value
                service.counters[f"error.{outcome}"] += 1
                return _error(e)
            except asyncio.CancelledError:
                outcome = CANCELLED
                raise
            finally:
                service.call_ended(key, outcome)

        return run

    async def get(request: web.Request) -> web.Response:
        q = request.query
        req = kv_pb2.GetItemsRequest(namespace=_path_part(request, 2, "namespace"), id=_path_part(request, 3, "id"),
                                     page_size_bytes=_int(request, "page_size_bytes"),
                                     with_write_times=q.get("with_write_times", "") in ("1", "true"))  # fmt: skip
        if "page_token" in q:
            req.page_token = _b64(q["page_token"], "page_token")
        keys = q.getall("key", [])
        if keys:
            req.predicate.keys.keys.extend(_b64(k, "key") for k in keys)
        elif "start" in q or "end" in q:
            req.predicate.range.start = _b64(q.get("start", ""), "start")
            req.predicate.range.end = _b64(q.get("end", ""), "end")
        data = await service.get_items(req, req.ByteSize(), _deadline(request))
        return _json(kv_pb2.GetItemsResponse.FromString(data))

    async def put(request: web.Request) -> web.Response:
        req = await _body(request, kv_pb2.PutItemsRequest)
        req.namespace, req.id = _path_part(request, 2, "namespace"), _path_part(request, 3, "id")
        return _json(await service.put_items(req, req.ByteSize()))

    async def delete(request: web.Request) -> web.Response:
        req = await _body(request, kv_pb2.DeleteItemsRequest)
        req.namespace, req.id = _path_part(request, 2, "namespace"), _path_part(request, 3, "id")
        return _json(await service.delete_items(req, req.ByteSize()))

    async def mutate(request: web.Request) -> web.Response:
        req = await _body(request, kv_pb2.MutateItemsRequest)
        req.namespace, req.id = _path_part(request, 2, "namespace"), _path_part(request, 3, "id")
        return _json(await service.mutate_items(req, req.ByteSize()))

    async def scan(request: web.Request) -> web.Response:
        q = request.query
        req = kv_pb2.ScanItemsRequest(namespace=_path_part(request, 2, "namespace"),
                                      page_size_bytes=_int(request, "page_size_bytes"),
                                      with_write_times=q.get("with_write_times", "") in ("1", "true"))  # fmt: skip
        if "cursor" in q:
            req.cursor = _b64(q["cursor"], "cursor")
        return _json(await service.scan_items(req, req.ByteSize(), _deadline(request)))

    async def index(_: web.Request) -> web.Response:
        return web.json_response({
            "service": "dgw.kv.v1.KeyValue", "dal": dal, "listener": listener,
            "namespaces": sorted(service.namespaces),
            "calls": {"GetItems": "GET /v1/NS/ID", "PutItems": "PUT /v1/NS/ID", "DeleteItems": "DELETE /v1/NS/ID",
                      "MutateItems": "POST /v1/NS/ID/mutate", "ScanItems": "GET /v1/NS"},
        })  # fmt: skip

    async def health(_: web.Request) -> web.Response:
        cache = service.cache.stats.state if service.cache is not None else "none"
        return web.json_response({"dal": dal, "status": "ok", "cache": cache})

    async def stats(_: web.Request) -> web.Response:
        body: dict[str, Any] = {"dal": dal, "counters": dict(service.counters)}
        if service.cache is not None:
            body["cache"] = vars(service.cache.stats)
        return web.json_response(body)

    limit = service.limits.max_request_bytes * 2  # base64 and JSON around the bytes the service checks
    application = web.Application(client_max_size=limit)
    application.router.add_get("/", index)
    application.router.add_get("/health", health)
    application.router.add_get("/stats", stats)
    application.router.add_get("/v1/{namespace}", errors(scan, "ScanItems"))
    application.router.add_get("/v1/{namespace}/{id}", errors(get, "GetItems"))
    application.router.add_put("/v1/{namespace}/{id}", errors(put, "PutItems"))
    application.router.add_delete("/v1/{namespace}/{id}", errors(delete, "DeleteItems"))
    application.router.add_post("/v1/{namespace}/{id}/mutate", errors(mutate, "MutateItems"))
    return application

