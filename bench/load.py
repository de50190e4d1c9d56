"""A request load generator process for ``data-path``, against one address.

- latency: one keep-alive connection (``http.client``, or a blocking gRPC channel),
  one request every 1/rate s, each timed alone. Blocking calls, no event loop: the
  least jitter a Python client can add to a sub-millisecond p99.
- throughput: ``concurrency`` callers back to back (aiohttp keep-alive, grpc.aio).

Every run is bounded in count and time. Driven over a ``multiprocessing`` pipe,
like the fleet workers."""

from __future__ import annotations

import asyncio
import gc
import http.client
import os
import time
from multiprocessing.connection import Connection

import aiohttp
import grpc

ECHO = "/dgw.sample.v1.Echo/Echo"


class _Client:
    def __init__(self, protocol: str, port: int, concurrency: int) -> None:
        self.protocol = protocol
        if protocol == "http":
            connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
            self._session = aiohttp.ClientSession(connector=connector)
            self._url = f"http://127.0.0.1:{port}/v1/item"
        else:
            self._channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
            self._echo = self._channel.unary_unary(ECHO)

    async def call(self) -> None:
        if self.protocol == "http":
            async with self._session.get(self._url) as r:
                await r.read()
                if r.status != 200:
                    raise RuntimeError(f"HTTP {r.status}")
        else:
            await self._echo(b"bench", timeout=10)

    async def close(self) -> None:
        if self.protocol == "http":
            await self._session.close()
        else:
            await self._channel.close()


def _paced(protocol: str, port: int, rate: float, seconds: float) -> dict:
    """One request every 1/rate s on one connection; the latency of each."""
    if protocol == "http":
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)

        def call() -> None:
            conn.request("GET", "/v1/item")
            r = conn.getresponse()
            r.read()
            if r.status != 200:
                raise RuntimeError(f"HTTP {r.status}")

        close = conn.close
    else:
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        echo = channel.unary_unary(ECHO)

        def call() -> None:
            echo(b"bench", timeout=10)

        close = channel.close
    latencies: list[float] = []
    errors = 0
    total = int(rate * seconds)
    try:
        for _ in range(20):
            call()
        start = time.perf_counter()
        for i in range(total):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            began = time.perf_counter()
            try:
                call()
            except Exception:
                errors += 1
                continue
            latencies.append((time.perf_counter() - began) * 1000)
    finally:
        close()
    return {"latencies_ms": latencies, "errors": errors, "sent": total}


async def _closed_loop(client: _Client, concurrency: int, seconds: float) -> dict:
    """``concurrency`` callers back to back for ``seconds``: requests per second."""
    done = 0
    errors = 0
    deadline = time.perf_counter() + seconds

    async def caller() -> None:
        nonlocal done, errors
        while time.perf_counter() < deadline:
            try:
                await client.call()
                done += 1
            except Exception:
                errors += 1

    start = time.perf_counter()
    await asyncio.wait_for(asyncio.gather(*(caller() for _ in range(concurrency))), seconds + 30)
    return {"requests": done, "errors": errors, "rps": done / (time.perf_counter() - start)}


async def _serve(conn: Connection) -> None:
    loop = asyncio.get_running_loop()
    while True:
        command, args = await loop.run_in_executor(None, conn.recv)
        if command == "stop":
            conn.send({"stopped": True})
            return
        gc.collect()
        gc.disable()  # the instrument must not pause while it times
        try:
            if command == "latency":
                reply = _paced(args["protocol"], args["port"], args["rate"], args["seconds"])
            else:
                reply = await _throughput(args["protocol"], args["port"], args["concurrency"], args["seconds"])
        except Exception as e:  # report, do not die: the orchestrator decides
            reply = {"error": f"{type(e).__name__}: {e}"}
        finally:
            gc.enable()
        conn.send(reply)


async def _throughput(protocol: str, port: int, concurrency: int, seconds: float) -> dict:
    client = _Client(protocol, port, concurrency)
    try:
        for _ in range(20):  # warm connections (and Envoy's pools) before measuring
            await client.call()
        return await _closed_loop(client, concurrency, seconds)
    finally:
        await client.close()


def load_main(conn: Connection, cpus: frozenset[int] | None = None) -> None:
    if cpus:
        os.sched_setaffinity(0, cpus)
    try:
        asyncio.run(_serve(conn))
    except (EOFError, KeyboardInterrupt):
        pass
