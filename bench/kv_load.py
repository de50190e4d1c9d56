"""The load generator of ``dgw bench kv``: a process of its own (multiprocessing, spawn)
driving one case at a time, open-loop, over a pipe.

Open loop: request i is due at t0 + i/rate whatever happened to the ones before, and
its latency is counted from when it was due, not from when it could be sent, so a slow
server shows up as latency instead of as a lower rate (no coordinated omission). At
most ``MAX_IN_FLIGHT`` requests wait at once; one over that is counted as dropped.
The mix is 80 % GetItems, 20 % PutItems of 1 KiB values, over ``records`` records.

Cases: ``direct`` (the same reads and writes made with asyncpg on the DAL's tables),
``gateway`` and ``gateway-cached`` (gRPC with mTLS through Envoy to the KV DAL, in a
namespace without and with the Redis cache).
"""

from __future__ import annotations

import asyncio
import gc
import os
import random
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import grpc

from bench.procs import serve_pipe
from dals.kv.client import TlsFiles
from dals.kv.tokens import new_token
from dals.kv.v1 import kv_pb2

MAX_IN_FLIGHT = 2000
VALUE = os.urandom(1024)
GET = "/dgw.kv.v1.KeyValue/GetItems"
PUT = "/dgw.kv.v1.KeyValue/PutItems"


class _Cases:
    def __init__(self) -> None:
        self.channel: grpc.aio.Channel | None = None
        self.pool: Any = None
        self.schema = ""
        self.records = 0

    async def prepare(self, target: str, tls: dict[str, str] | None, server_name: str, dsn: str, schema: str,
                      records: int) -> dict[str, Any]:  # fmt: skip
        """Channels to ``target``: mTLS with ``tls`` (a gateway), plaintext without (a DAL itself)."""
        import asyncpg

        if tls is None:
            self.channel = grpc.aio.insecure_channel(target)
        else:
            creds = TlsFiles(Path(tls["cert"]), Path(tls["key"]), Path(tls["ca"])).credentials()
            self.channel = grpc.aio.secure_channel(target, creds,
                                                   options=[("grpc.ssl_target_name_override", server_name)])  # fmt: skip
        self.pool = await asyncpg.create_pool(dsn, min_size=4, max_size=4, reset=_keep_session,
                                              server_settings={"application_name": "bench-direct"})  # fmt: skip
        self.schema, self.records = schema, records
        self._get = self.channel.unary_unary(GET, request_serializer=None, response_deserializer=None)
        self._put = self.channel.unary_unary(PUT, request_serializer=None, response_deserializer=None)
        s = schema
        self._sql_get = (f"SELECT key, value FROM {s}.items WHERE namespace = $1 AND id = $2 "
                         "AND (value IS NOT NULL OR chunk_size > 0) ORDER BY key LIMIT 64")  # fmt: skip
        self._sql_put = (f"INSERT INTO {s}.items AS i (namespace, id, key, value, size, chunk_size, write_time, writer) "
                         "VALUES ($1, $2, $3, $4, $5, 0, $6, $7) ON CONFLICT (namespace, id, key) DO UPDATE SET "
                         "value = EXCLUDED.value, size = EXCLUDED.size, write_time = EXCLUDED.write_time, "
                         "writer = EXCLUDED.writer WHERE (i.write_time, i.writer) < (EXCLUDED.write_time, EXCLUDED.writer)")  # fmt: skip
        return {"prepared": True}

    async def call(self, case: str, op: str, record: int) -> None:
        rid = f"rec-{record:05d}"
        if case == "direct":
            async with self.pool.acquire() as conn:
                if op == "get":
                    rows = await conn.fetch(self._sql_get, "bench", rid)
                    if not rows:
                        raise RuntimeError(f"no items in {rid}")
                else:
                    token = new_token()
                    await conn.execute(self._sql_put, "bench", rid, b"v", VALUE, len(VALUE),
                                       token.generation_time_us, token.id)  # fmt: skip
            return
        ns = "bench_cached" if case == "gateway-cached" else "bench"
        if op == "get":
            data = await self._get(kv_pb2.GetItemsRequest(namespace=ns, id=rid).SerializeToString(), timeout=10)
            if not kv_pb2.GetItemsResponse.FromString(data).items:
                raise RuntimeError(f"no items in {rid}")
        else:
            request = kv_pb2.PutItemsRequest(namespace=ns, id=rid, items=[kv_pb2.Item(key=b"v", value=VALUE)],
                                             idempotency_token=new_token())  # fmt: skip
            await self._put(request.SerializeToString(), timeout=10)

    async def block(self, case: str, rate: float, seconds: float, seed: int, reads: float = 0.8) -> dict[str, Any]:
        """``rate`` requests a second for ``seconds``, open loop; latencies by operation (ms)."""
        loop = asyncio.get_running_loop()
        rng = random.Random(seed)
        latencies: dict[str, list[float]] = {"get": [], "put": []}
        errors: list[str] = []
        dropped = 0
        in_flight: set[asyncio.Task[None]] = set()

        async def one(op: str, record: int, due: float) -> None:
            try:
                await self.call(case, op, record)
            except Exception as e:
                errors.append(f"{type(e).__name__}: {e}"[:200])
                return
            latencies[op].append((loop.time() - due) * 1000)

        n = int(rate * seconds)
        start = loop.time() + 0.005
        for i in range(n):
            due = start + i / rate
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if len(in_flight) >= MAX_IN_FLIGHT:
                dropped += 1
                continue
            op = "get" if rng.random() < reads else "put"
            task = asyncio.create_task(one(op, rng.randrange(self.records), due))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
        if in_flight:
            await asyncio.wait(in_flight, timeout=30)
        wall = loop.time() - start
        return {"latencies_ms": latencies, "errors": len(errors), "error_sample": errors[:3], "dropped": dropped,
                "sent": n, "wall_s": wall}  # fmt: skip

    async def close(self) -> None:
        channel, pool, self.channel, self.pool = self.channel, self.pool, None, None
        if channel is not None:
            await channel.close(None)
        if pool is not None:
            await pool.close()


async def _keep_session(_: Any) -> None:
    """No reset round trip on release: as the DAL's engine does, so both sides make the same calls."""


def load_main(conn: Connection) -> None:
    cases = _Cases()

    async def block(**args: Any) -> dict[str, Any]:
        gc.collect()
        gc.disable()  # the instrument must not pause while it times
        try:
            began = time.perf_counter()
            result = await cases.block(**args)
            result["generator_s"] = time.perf_counter() - began
            return result
        finally:
            gc.enable()

    async def run() -> None:
        await serve_pipe(conn, {"prepare": cases.prepare, "block": block}, cases.close)

    try:
        asyncio.run(run())
    except (EOFError, KeyboardInterrupt):
        pass
