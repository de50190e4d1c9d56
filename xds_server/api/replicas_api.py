"""``GET /v1/replicas``: the control plane's replicas and who owns what.

One server answers with itself (store ``sqlite``). A replica lists every replica that
holds a session in etcd (``replicas/``, each under its lease: a dead one drops out
within the lease TTL), the owner of each once-only job, and its own view: the etcd
member it talks to and, when it cannot, why (what ``/healthz`` says too)."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from etcd_api import rpc_pb2
from xds_server.ha.replica import Replica
from xds_server.store.etcd_client import EtcdError, prefix_end

REPLICA = web.AppKey("replica", Replica)


async def replicas(request: web.Request) -> web.Response:
    replica = request.app.get(REPLICA)
    if replica is None:
        return web.json_response({"store": "sqlite", "replicas": [], "owners": {}, "this": None})
    body: dict[str, Any] = {"store": replica.store.url, "this": replica.status()}
    base = replica.store.prefix
    try:
        listed = await replica.store.client.range(rpc_pb2.RangeRequest(
            key=base + b"replicas/", range_end=prefix_end(base + b"replicas/")))  # fmt: skip
        owned = await replica.store.client.range(rpc_pb2.RangeRequest(
            key=base + b"owners/", range_end=prefix_end(base + b"owners/")))  # fmt: skip
    except EtcdError as e:
        return web.json_response({**body, "error": f"etcd is unreachable: {e}"}, status=503)
    body["replicas"] = sorted((json.loads(kv.value) for kv in listed.kvs), key=lambda r: str(r.get("replica")))
    body["owners"] = {kv.key[len(base + b"owners/"):].decode(): kv.value.decode() for kv in owned.kvs}
    return web.json_response(body)


def register(app: web.Application, replica: Replica | None) -> None:
    if replica is not None:
        app[REPLICA] = replica
    app.router.add_get("/v1/replicas", replicas)
