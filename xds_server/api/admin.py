"""The admin HTTP API (aiohttp): shard and node status, reports, discovery, and (with
the config store) the operators' shard routes of ``shards_api``.

Every handler here is a thin view of ``ShardRegistry`` and the snapshot cache; with
the store, a shard's summary adds its stored version, owner and source.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from google.protobuf import json_format

from dgw_api.v1 import gateway_pb2
from xds_server.api import deploy_api, shards_api
from xds_server.api.admin_http import read_json
from xds_server.api.guard import guard_middleware
from xds_server.changes import Changes
from xds_server.config import quote
from xds_server.redact import masking_middleware
from xds_server.resources import ENDPOINT
from xds_server.shards import ShardRegistry
from xds_server.store import ConfigStore, StoreError


@dataclass(frozen=True)
class Health:
    """Why the server is not healthy (e.g. the config watch failed), or None."""

    problem: Callable[[], str | None]
    # The control channel runs without TLS (``--insecure``): said in every /healthz.
    insecure: bool = False


REGISTRY = web.AppKey("registry", ShardRegistry)
HEALTH = web.AppKey("health", Health)
STORE = web.AppKey("store", ConfigStore)  # the config store (audit log), with the store only


def _jsonable(value: Any) -> Any:
    """``value`` as JSON types. Dataclasses field by field (``dataclasses.asdict``
    deep-copies everything first: 45 ms for 1,000 node statuses, against 5 here)."""
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    names = _field_names(type(value))
    if names is not None:
        return {name: _jsonable(getattr(value, name)) for name in names}
    if hasattr(value, "to_dict"):
        return value.to_dict()
    return value


_FIELDS: dict[type, tuple[str, ...] | None] = {}


def _field_names(cls: type) -> tuple[str, ...] | None:
    """A dataclass's field names (looked up once per class), or None."""
    try:
        return _FIELDS[cls]
    except KeyError:
        names = tuple(f.name for f in dataclasses.fields(cls)) if dataclasses.is_dataclass(cls) else None
        _FIELDS[cls] = names
        return names


def _json(data: Any, status: int = 200) -> web.Response:
    # Compact: json's C encoder (with ``indent`` it is pure Python, 4× slower) — a
    # listing of thousands of nodes is encoded on the event loop.
    return web.json_response(_jsonable(data), status=status)


def _iso(epoch: float) -> str:
    """Times as ``/v1/nodes`` shows them (ISO 8601, UTC)."""
    return datetime.fromtimestamp(epoch, UTC).isoformat()


def _shard_summary(registry: ShardRegistry, name: str) -> dict[str, Any]:
    shard = registry.shards.get(name)
    rejection = registry.rejections.get(name)
    # Endpoints are per node (each Envoy fronts its own host's DALs): a shard-level
    # EDS version would match no node, so EDS versions are shown per node only.
    shared = {k: v for k, v in registry.cache.shard_versions(name).items() if k != ENDPOINT} if shard else {}
    return {
        "shard": name,
        "config_version": shard.config_version if shard else None,
        "source": shard.source if shard else None,
        "accepted_at": _iso(shard.accepted_at) if shard else None,
        "nodes": sorted(shard.nodes) if shard else [],
        "xds_versions": shared,
        "node_endpoints_versions": {
            node_id: _endpoints_version(registry, name, node_id) for node_id in sorted(shard.nodes)
        } if shard else {},
        "rejected": {**dataclasses.asdict(rejection), "at": _iso(rejection.at)} if rejection else None,
    }


def _endpoints_version(registry: ShardRegistry, shard: str, node_id: str) -> str | None:
    view = registry.cache.view(shard, node_id)
    return view.versions().get(ENDPOINT) if view is not None else None


async def healthz(request: web.Request) -> web.Response:
    health = request.app[HEALTH]
    problem = health.problem()
    extra = {"insecure": True} if health.insecure else {}
    if problem is not None:
        return web.json_response({"status": "failing", "problem": problem, **extra}, status=503)
    return web.json_response({"status": "ok", **extra})


def _changes(request: web.Request) -> Changes | None:
    return request.app.get(shards_api.CHANGES)


async def list_shards(request: web.Request) -> web.Response:
    registry = request.app[REGISTRY]
    changes = _changes(request)
    if changes is None:
        names = sorted(set(registry.shards) | set(registry.rejections))
        return _json({"shards": [_shard_summary(registry, n) for n in names]})
    return _json({"shards": [
        {**_shard_summary(registry, n), **shards_api.store_summary(changes, n)}
        for n in shards_api.shard_names(changes)
    ]})  # fmt: skip


async def get_shard(request: web.Request) -> web.Response:
    registry = request.app[REGISTRY]
    changes = _changes(request)
    name = request.match_info["shard"]
    known = set(shards_api.shard_names(changes)) if changes else set(registry.shards) | set(registry.rejections)
    if name not in known:
        return _json({"error": f"no shard {name!r}"}, status=404)
    summary = _shard_summary(registry, name)
    headers: dict[str, str] = {}
    if changes is not None:
        summary.update(shards_api.store_summary(changes, name))
        summary.update(deploy_api.shard_desires(changes, name))
        try:
            head = await changes.store.get(name)
        except StoreError as e:  # a replica cut off from etcd still shows what it serves
            head = None
            summary["store_error"] = str(e)
        # The text as written: `${VAR}` references stay references, so values read
        # from the environment never appear here.
        summary["yaml"] = head.text if head else None
        if head is not None:
            headers["ETag"] = f'"{head.meta.number}"'
    shard = registry.shards.get(name)
    # Interpolated values (secrets) are ***: only the sidecars get them (WatchConfig).
    summary["config"] = shard.shown_yaml() if shard else None
    summary["reports"] = {
        node_id: {
            "generation": node.generation,
            "received_at": _iso(node.received_at),
            "report": json_format.MessageToDict(node.report, preserving_proto_field_name=True),
        }
        for node_id, node in sorted((shard.nodes if shard else {}).items())
    }
    response = _json(summary)
    response.headers.update(headers)
    return response


async def list_nodes(request: web.Request) -> web.Response:
    return _json({"nodes": request.app[REGISTRY].cache.node_status()})


async def post_report(request: web.Request) -> web.Response:
    registry = request.app[REGISTRY]
    try:
        body = await read_json(request, registry.limits)
        report = json_format.ParseDict(body, gateway_pb2.NodeReport())
    except TimeoutError:
        return _json({"error": "the request body did not arrive in time"}, status=408)
    except (ValueError, json_format.ParseError) as e:
        return _json({"error": f"not a NodeReport: {quote(str(e), 300)}"}, status=400)
    try:
        generation = registry.report(report, request.remote or "127.0.0.1")
    except ValueError as e:
        return _json({"error": str(e)}, status=400)
    return _json({"generation": generation})


async def discovery(request: web.Request) -> web.Response:
    address = request.match_info["address"]
    return _json({"address": address, "instances": request.app[REGISTRY].discovery(address)})


def make_app(
    registry: ShardRegistry,
    problem: Callable[[], str | None] = lambda: None,
    changes: Changes | None = None,
    insecure: bool = False,
) -> web.Application:
    # Outermost first: every answer is masked (redact), every name checked (guard),
    # then auth.install adds access control.
    app = web.Application(client_max_size=registry.limits.admin_body_bytes,
                          middlewares=[masking_middleware(registry.secrets), guard_middleware])
    app[REGISTRY] = registry
    app[HEALTH] = Health(problem, insecure)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/v1/shards", list_shards)
    app.router.add_get("/v1/shards/{shard}", get_shard)
    app.router.add_get("/v1/nodes", list_nodes)
    app.router.add_post("/v1/reports", post_report)
    app.router.add_get("/v1/discovery/{address}", discovery)
    if changes is not None:
        app[STORE] = changes.store
        shards_api.register(app, changes)
    return app
