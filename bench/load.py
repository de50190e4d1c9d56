"""A request load generator process for ``data-path``, against the addresses of its cases.

- latency: several addresses (one per case) measured interleaved, in short blocks
  that rotate, each on its own keep-alive connection (``http.client``, or a blocking
  gRPC channel), one request every 1/rate s, each timed alone. Blocking calls, no
  event loop: the least jitter a Python client can add to a sub-millisecond p99; and
  whatever the machine does meanwhile (a noisy neighbour, a busy hypervisor) falls on
  every case alike.
- throughput: ``concurrency`` callers back to back (aiohttp keep-alive, grpc.aio).

Every run is bounded in count and time. Driven over a ``multiprocessing`` pipe,
like the fleet workers."""

from __future__ import annotations

import asyncio
import gc
import http.client
import ssl
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

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
            self._echo = self._channel.unary_unary(ECHO, request_serializer=None, response_deserializer=None)

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
            await self._channel.close(grace=None)


def tls_context(tls: dict[str, str]) -> ssl.SSLContext:
    """A client context with ``tls``'s certificate and key (mTLS) that trusts its ``ca``.
    Gateways are named by their SPIFFE ID, not a host name: chaining is what is checked."""
    context = ssl.create_default_context(cafile=tls["ca"])
    context.check_hostname = False
    context.load_cert_chain(tls["cert"], tls["key"])
    return context


def _blocking_call(
    protocol: str, port: int, tls: dict[str, str] | None = None
) -> tuple[Callable[[], None], Callable[[], None]]:
    """(call, close) of one keep-alive connection: ``http.client`` (over mTLS with
    ``tls``) or a blocking gRPC channel."""
    if protocol == "http":
        conn = (
            http.client.HTTPSConnection("127.0.0.1", port, timeout=10, context=tls_context(tls)) if tls
            else http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        )

        def call() -> None:
            conn.request("GET", "/v1/item")
            r = conn.getresponse()
            r.read()
            if r.status != 200:
                raise RuntimeError(f"HTTP {r.status}")

        return call, conn.close
    if tls:
        raise ValueError("gRPC over mTLS is measured through the client proxy, not here")
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    echo = channel.unary_unary(ECHO, request_serializer=None, response_deserializer=None)

    def call_grpc() -> None:
        echo(b"bench", timeout=10)

    return call_grpc, channel.close


def _interleaved(protocol: str, ports: dict[str, int], rate: float, block: int, rounds: int,
                 pause: float, warmup: int = 5, tls: dict[str, dict[str, str]] | None = None,
                 ) -> dict[str, Any]:  # fmt: skip
    """Blocks of ``block`` requests, one every 1/rate s, case after case, ``rounds`` times.

    Every case has its own keep-alive connection, opened and warmed before timing. The
    order of the cases rotates each round, so no case always follows the same one.
    Before every block the loop pauses ``pause`` s, so what the last block left in
    flight (mirrored requests to a slow target) has landed, then sends ``warmup``
    untimed requests: every block starts alike, whichever case it is. A case named in
    ``tls`` connects over mTLS with those files. Returns, per case, one list of
    latencies (ms) per round."""
    names = list(ports)
    calls = {name: _blocking_call(protocol, port, (tls or {}).get(name)) for name, port in ports.items()}
    latencies: dict[str, list[list[float]]] = {name: [] for name in names}
    errors = {name: 0 for name in names}
    sent = {name: 0 for name in names}
    try:
        for name, (call, _) in calls.items():
            for _ in range(20):
                call()
            sent[name] += 20
        for r in range(rounds):
            for name in names[r % len(names):] + names[: r % len(names)]:
                call = calls[name][0]
                time.sleep(pause)
                for _ in range(warmup):
                    call()
                sent[name] += warmup + block
                block_ms: list[float] = []
                start = time.perf_counter()
                for i in range(block):
                    delay = start + i / rate - time.perf_counter()
                    if delay > 0:
                        time.sleep(delay)
                    began = time.perf_counter()
                    try:
                        call()
                    except Exception:
                        errors[name] += 1
                        continue
                    block_ms.append((time.perf_counter() - began) * 1000)
                latencies[name].append(block_ms)
    finally:
        for _, close in calls.values():
            close()
    return {"latencies_ms": latencies, "errors": errors, "sent": sent}


async def _closed_loop(client: _Client, concurrency: int, seconds: float) -> dict[str, Any]:
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
                reply = _interleaved(args["protocol"], args["ports"], args["rate"], args["block"], args["rounds"],
                                     args["pause"], tls=args.get("tls"))  # fmt: skip
            else:
                reply = await _throughput(args["protocol"], args["port"], args["concurrency"], args["seconds"])
        except Exception as e:  # report, do not die: the orchestrator decides
            reply = {"error": f"{type(e).__name__}: {e}"}
        finally:
            gc.enable()
        conn.send(reply)


async def _throughput(protocol: str, port: int, concurrency: int, seconds: float) -> dict[str, Any]:
    client = _Client(protocol, port, concurrency)
    try:
        for _ in range(20):  # warm connections (and Envoy's pools) before measuring
            await client.call()
        return await _closed_loop(client, concurrency, seconds)
    finally:
        await client.close()


def load_main(conn: Connection) -> None:
    try:
        asyncio.run(_serve(conn))
    except (EOFError, KeyboardInterrupt):
        pass
