"""``GET /v1/status`` (every connected node's sync state, like ``istioctl
proxy-status``) and ``GET /metrics`` (Prometheus): views of the cache, the shard
registry and ``xds_server.metrics``; the decisions live in ``xds_server.status``."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any, TypeAlias

from aiohttp import web

from dgw_api.v1 import gateway_pb2
from xds_server import metrics
from xds_server.config.model import parse_duration
from xds_server.deploy.rollout.observe import location_text
from xds_server.node_stats import cluster_summary, listener_summary, resilience, route_summaries
from xds_server.resources import ENDPOINT
from xds_server.shards import ShardRegistry
from xds_server.status import STATUS_TYPES, dal_health, node_row

StoredVersion: TypeAlias = Callable[[str], "int | None"]

FLEET_REGISTRY = web.AppKey("fleet_registry", ShardRegistry)
STORED_VERSION: web.AppKey[StoredVersion] = web.AppKey("stored_version")


def _dals(registry: ShardRegistry, shard: str, node_id: str) -> dict[str, dict[str, Any]]:
    state = registry.shards.get(shard)
    node = state.nodes.get(node_id) if state is not None else None
    if node is None:
        return {}
    health = gateway_pb2.Health.Name
    return dal_health(
        (e.dal, e.listener, health(e.health), e.message) for e in node.report.endpoints
    )


def _host(registry: ShardRegistry, shard: str, node_id: str) -> dict[str, Any]:
    """Where the node runs (its sidecar says) and what its sidecar could not do: builds it
    refused (the tamper check) and goals it cannot reach."""
    state = registry.shards.get(shard)
    node = state.nodes.get(node_id) if state is not None else None
    if node is None:
        return {"location": "", "problems": {}}
    status = node.report.status
    return {"location": location_text(node.report.location),
            "problems": {k: v for k, v in sorted(status.items()) if k.startswith(("refused.", "error."))}}


def _owners(registry: ShardRegistry, shard: str) -> list[str]:
    state = registry.shards.get(shard)
    desires = state.config.deploy_desires if state is not None else None
    return [f"{o.type} {o.value}" for o in desires.owners] if desires is not None else []


def status(
    registry: ShardRegistry, shard: str | None = None, stored: StoredVersion = lambda _: None
) -> dict[str, Any]:
    """The ``/v1/status`` document (for one shard, or all). ``stored``: a shard's
    version number in the config store (what ``dgw history`` lists), if stored."""
    cache = registry.cache
    rows = []
    for node in cache.node_status(shard):
        view = cache.view(node.shard, node.node_id)
        rows.append({**node_row(node, view.versions() if view else None,
                                _dals(registry, node.shard, node.node_id)),
                     **_host(registry, node.shard, node.node_id)})  # fmt: skip
    rows.sort(key=lambda r: (r["shard"], r["node"], r["protocol"], r["connected_since"]))
    # Shards with a config, and those only nodes name (connected before a config came).
    names = sorted(set(registry.shards) | {r["shard"] for r in rows})
    if shard is not None:
        names = [n for n in names if n == shard]
    shards = {}
    for name in names:
        state = registry.shards.get(name)
        versions = cache.shard_versions(name)
        shards[name] = {
            "version": stored(name) if state else None,
            "config_version": state.config_version if state else None,
            # EDS is per node (each Envoy fronts its own host): no shard-wide version.
            "xds_versions": {short: versions[t] for t, short in STATUS_TYPES.items()
                             if t in versions and t != ENDPOINT},
            "nodes": sum(1 for r in rows if r["shard"] == name),
            "in_sync": sum(1 for r in rows if r["shard"] == name and r["in_sync"]),
            "owners": _owners(registry, name),
        }  # fmt: skip
    return {"nodes": rows, "shards": shards}


async def get_status(request: web.Request) -> web.Response:
    registry = request.app[FLEET_REGISTRY]
    shard = request.query.get("shard") or None
    if shard is not None and len(shard) > 253:
        return web.json_response({"error": "shard names are at most 253 characters"}, status=400)
    return web.json_response(status(registry, shard, request.app[STORED_VERSION]))


STATS_WINDOW_S = 30.0


def stats(registry: ShardRegistry, shard: str, window_s: float, now: float,
          node: str | None = None) -> dict[str, Any] | None:  # fmt: skip
    """The ``/v1/stats/{shard}`` document: what each cluster (a DAL's listener) and
    each HTTP listener did over the last ``window_s``, summed over the shard's nodes (or
    ``node``'s alone). None for a shard without a config."""
    state = registry.shards.get(shard)
    if state is None:
        return None
    window, nodes = registry.stats.window(shard, window_s, now, None if node is None else [node])
    clusters = {}
    for u in state.ir.upstreams:
        summary = cluster_summary(window, u.name)
        clusters[u.name] = {"dal": u.dal, "listener": u.listener, **asdict(summary),
                            "resilience": resilience(summary.counters)}  # fmt: skip
    listeners = {}
    routes: dict[str, dict[str, Any]] = {}
    for lst in state.ir.listeners:
        if lst.protocol == "tcp":
            continue
        summary = listener_summary(window, lst.listener)
        # the listener's own filters (local rate limit) count under its name
        own = {k: v for k, v in window.counters.items() if k.startswith(f"{lst.listener}.")}
        listeners[lst.listener] = {**asdict(summary), "resilience": resilience({**summary.counters, **own})}
        for route, traffic in route_summaries(window, lst.listener).items():
            routes[f"{lst.listener}/{route}"] = {"listener": lst.listener, "route": route, **asdict(traffic),
                                                 "resilience": resilience(traffic.counters)}  # fmt: skip
    known = tuple(f"cluster.{u.name}." for u in state.ir.upstreams) + tuple(
        prefix for lst in state.ir.listeners
        for prefix in (f"http.{lst.listener}.", f"vhost.{lst.listener}.", f"{lst.listener}.")
    )  # fmt: skip
    other = {k: v for k, v in sorted(window.counters.items()) if not k.startswith(known)}
    return {"shard": shard, "window_s": window_s, "measured_s": round(window.seconds, 3), "nodes": nodes,
            "resilience": resilience(window.counters),
            "clusters": clusters, "listeners": listeners, "routes": routes, "other": other}  # fmt: skip


async def get_stats(request: web.Request) -> web.Response:
    registry = request.app[FLEET_REGISTRY]
    shard = request.match_info["shard"]
    text = request.query.get("window", "")
    try:
        window_s = parse_duration(text) if text else STATS_WINDOW_S
    except ValueError as e:
        return web.json_response({"error": f"window: {e}"}, status=400)
    if not 0 < window_s <= 3600:
        return web.json_response({"error": "window must be above 0 and at most 1h"}, status=400)
    document = stats(registry, shard, window_s, time.time(), request.query.get("node") or None)
    if document is None:
        return web.json_response({"error": f"no shard {shard[:80]!r}"}, status=404)
    return web.json_response(document)


async def get_metrics(request: web.Request) -> web.Response:
    response = web.Response(body=metrics.render())
    response.content_type = "text/plain"
    response.headers["Content-Type"] = metrics.CONTENT_TYPE
    return response


def add_routes(
    app: web.Application, registry: ShardRegistry, stored: StoredVersion = lambda _: None
) -> None:
    app[FLEET_REGISTRY] = registry
    app[STORED_VERSION] = stored
    app.router.add_get("/v1/status", get_status)
    app.router.add_get("/v1/stats/{shard}", get_stats)
    app.router.add_get("/metrics", get_metrics)
