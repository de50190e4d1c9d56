"""The open-loop load generator of ``dgw bench data-path --overload``, in its own process.

``offer``: ``rate`` requests per second for ``seconds`` (a request every 1/rate s,
whatever the answers do: an overloaded server cannot slow the offer down, as real
clients would not wait for it), each on its own HTTP/1.1 keep-alive connection from
an unlimited pool, classes mixed in the given shares (each class its own headers and
method). Every request is bounded by ``timeout``; a request still unanswered then
counts as ``timeout``. Returns, per class, each request's status and latency, and
how many shed answers carried ``retry-after``. Driven over a pipe (``serve_pipe``).
"""

from __future__ import annotations

import asyncio
import time
from multiprocessing.connection import Connection
from typing import Any

import aiohttp

from bench.procs import serve_pipe

TIMEOUT = 0  # status of a request the client gave up on


class _Offer:
    def __init__(self) -> None:
        self.session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()

    async def offer(self, url: str, rate: float, seconds: float, classes: dict[str, dict[str, Any]],
                    timeout: float = 5.0) -> dict[str, Any]:  # fmt: skip
        """``classes``: name → {share, method, headers}; shares sum to 1."""
        if self.session is None:
            self.session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, force_close=False)
            )
        session = self.session
        total = int(rate * seconds)
        names = list(classes)
        plan = _interleave({n: classes[n]["share"] for n in names}, total)
        results: dict[str, dict[str, list[Any]]] = {
            n: {"status": [], "ms": [], "retry_after": []} for n in names
        }
        limit = aiohttp.ClientTimeout(total=timeout)

        async def one(name: str) -> None:
            spec = classes[name]
            began = time.perf_counter()
            status, retry_after = TIMEOUT, False
            try:
                async with session.request(spec.get("method", "GET"), url, headers=spec.get("headers") or {},
                                           data=b"x" if spec.get("method") == "POST" else None,
                                           timeout=limit) as r:  # fmt: skip
                    await r.read()
                    status, retry_after = r.status, "retry-after" in r.headers
            except (TimeoutError, aiohttp.ClientError, OSError):
                status = TIMEOUT
            out = results[name]
            out["status"].append(status)
            out["ms"].append((time.perf_counter() - began) * 1000)
            out["retry_after"].append(retry_after)

        tasks = []
        start = time.perf_counter()
        for i, name in enumerate(plan):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(name)))
        offered_s = time.perf_counter() - start
        await asyncio.wait_for(asyncio.gather(*tasks), timeout + 30)
        return {"results": results, "offered_s": offered_s, "sent": total}


def _interleave(shares: dict[str, float], total: int) -> list[str]:
    """``total`` class names in the given shares, spread evenly (largest remainder)."""
    plan: list[str] = []
    owed = dict.fromkeys(shares, 0.0)
    for _ in range(total):
        for name, share in shares.items():
            owed[name] += share
        name = max(owed, key=lambda n: owed[n])
        owed[name] -= 1.0
        plan.append(name)
    return plan


def overload_main(conn: Connection) -> None:
    offer = _Offer()
    try:
        asyncio.run(serve_pipe(conn, {"offer": offer.offer}, offer.close))
    except (EOFError, KeyboardInterrupt):
        pass
