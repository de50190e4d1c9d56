"""``dgw bench etcd-client``: which etcd client the config store uses, by measuring.

The two ways open to us (PyPI's etcd clients cannot live beside xds-protos' protobuf 7):
etcd's gRPC API through stubs generated from its own .proto files (``etcd_api``), and
its JSON gateway (``/v3/kv/...``) through aiohttp. One etcd member on loopback; in
interleaved rounds, each client does the store's three operations — a put, a range of
one key, and a compare-and-set transaction — one at a time, and the figure is the
latency (p50, p99) and the client's CPU per operation (process time, which is what
the xds_server pays on its event loop). Rounds alternate the order of the clients, so
a noisy neighbour hurts both alike.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp

from bench.report import save_json
from etcd_api import rpc_pb2
from testkit.etcd import EtcdCluster
from testkit.wait import wait_until
from xds_server.store.etcd_client import EtcdClient, mod_is, put

VALUE = b"x" * 600  # about one shard version's metadata


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


class _Json:
    """The same three operations over the JSON gateway."""

    def __init__(self, session: aiohttp.ClientSession, endpoint: str):
        self._session, self._base = session, f"http://{endpoint}/v3"

    async def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        async with self._session.post(self._base + path, data=json.dumps(body)) as r:
            r.raise_for_status()
            result: dict[str, Any] = json.loads(await r.read())
            return result

    async def put(self, key: bytes) -> None:
        await self._post("/kv/put", {"key": _b64(key), "value": _b64(VALUE)})

    async def get(self, key: bytes) -> None:
        got = await self._post("/kv/range", {"key": _b64(key)})
        base64.b64decode(got["kvs"][0]["value"])

    async def cas(self, key: bytes) -> None:
        got = await self._post("/kv/range", {"key": _b64(key)})
        mod = int(got["kvs"][0]["mod_revision"])
        done = await self._post("/kv/txn", {
            "compare": [{"key": _b64(key), "target": "MOD", "result": "EQUAL", "mod_revision": str(mod)}],
            "success": [{"request_put": {"key": _b64(key), "value": _b64(VALUE)}}],
        })
        if not done.get("succeeded"):
            raise RuntimeError("json txn failed")


class _Grpc:
    def __init__(self, client: EtcdClient):
        self._client = client

    async def put(self, key: bytes) -> None:
        await self._client.put(key, VALUE)

    async def get(self, key: bytes) -> None:
        got = await self._client.range(rpc_pb2.RangeRequest(key=key))
        _ = got.kvs[0].value

    async def cas(self, key: bytes) -> None:
        got = await self._client.range(rpc_pb2.RangeRequest(key=key))
        done = await self._client.txn([mod_is(key, got.kvs[0].mod_revision)], [put(key, VALUE)])
        if not done.succeeded:
            raise RuntimeError("grpc txn failed")


async def _measure(op: Callable[[bytes], Awaitable[None]], count: int, key: bytes) -> tuple[list[float], float]:
    latencies = []
    cpu = time.process_time()
    for _ in range(count):
        started = time.perf_counter()
        await op(key)
        latencies.append(time.perf_counter() - started)
    return latencies, time.process_time() - cpu


def _p(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


async def _run(endpoint: str, ops: int, rounds: int) -> dict[str, Any]:
    client = EtcdClient([endpoint])
    results: dict[str, dict[str, list[float]]] = {}
    async with aiohttp.ClientSession() as session:
        clients: dict[str, Any] = {"grpc": _Grpc(client), "json": _Json(session, endpoint)}
        for c in clients.values():
            await c.put(b"/bench/key")
        for r in range(rounds):
            order = list(clients) if r % 2 == 0 else list(reversed(clients))
            for name in order:
                for op in ("put", "get", "cas"):
                    latencies, cpu = await _measure(getattr(clients[name], op), ops, b"/bench/key")
                    row = results.setdefault(f"{name} {op}", {"p50_ms": [], "p99_ms": [], "cpu_us": []})
                    row["p50_ms"].append(_p(latencies, 50) * 1000)
                    row["p99_ms"].append(_p(latencies, 99) * 1000)
                    row["cpu_us"].append(cpu / ops * 1e6)
    await client.close()
    return {k: {m: [round(min(v), 3), round(max(v), 3)] for m, v in row.items()} for k, row in results.items()}


def main(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="dgw-bench-etcd-") as tmp:
        cluster = EtcdCluster(Path(tmp), 1).start()
        try:
            member = cluster.members[0]
            wait_until(lambda: member.child is not None and member.child.serving(member.client_port, "etcd"),
                       30, what="etcd to listen")  # fmt: skip
            figures = asyncio.run(_run(member.endpoint, args.ops, args.rounds))
        finally:
            cluster.stop()
    result = {"figure": "etcd-client", "ops_per_round": args.ops, "rounds": args.rounds,
              "ranges_over_rounds": figures}  # fmt: skip
    if args.json:
        json.dump(result, sys.stdout, indent=1)
        print()
    else:
        print(f"{'client op':<12} {'p50 ms':>14} {'p99 ms':>14} {'client CPU µs/op':>18}")
        for name, row in figures.items():
            print(f"{name:<12} {_range(row['p50_ms']):>14} {_range(row['p99_ms']):>14} {_range(row['cpu_us']):>18}")
    if args.save:
        save_json(args.name or "etcd-client", result, args.out)
    return 0


def _range(pair: list[float]) -> str:
    return f"{pair[0]:g}–{pair[1]:g}"
