"""Capacity plans computed in the background and cached by the desires' key.

The planner takes about a second of CPU and loads numpy and scipy: it runs in one
worker process (spawned, niced, started on first need), never on the event loop or a
request's path. A request is answered at once: the cached plan (a config-store
record, kind ``plan``, named by ``planning.plan_request``'s key, so plans survive
restarts and are shared by every replica), or "computing" while the worker works on
it. Shards with capacity desires get their plan computed when they are served, so
``dgw plan SHARD`` usually finds it ready.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from xds_server.store import ConfigStore, RecordConflict, StoreError

from . import planning

log = logging.getLogger("xds_server.deploy.plans")

RECORD_KIND = "plan"
MAX_PENDING = 64  # plans queued at most; more are refused until some are done
_NICE = 10
_LINE_LIMIT = 16 * 1024 * 1024  # one plan document, as one JSON line


class PlansBusy(Exception):
    """Too many plans are being computed; try again shortly."""


@dataclass(frozen=True)
class Answer:
    state: Literal["ready", "computing", "problem"]
    key: str
    plan: Mapping[str, Any] | None = None
    problem: Mapping[str, str] | None = None


class PlanService:
    """Plans asked by key, computed one at a time by a worker child process
    (``python -m xds_server.deploy.plan_worker``: one JSON request per line in, one
    JSON plan per line out), cached in the config store."""

    def __init__(self, store: ConfigStore, max_pending: int = MAX_PENDING):
        self.store = store
        self.max_pending = max_pending
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._worker: asyncio.Task[None] | None = None
        self._child: asyncio.subprocess.Process | None = None
        self._version: str | None = planning.planner_version()

    @property
    def installed(self) -> bool:
        return self._version is not None

    def request(self, desires: Any, simulations: int = 0) -> dict[str, Any]:
        """``planning.plan_request`` with the installed planner's version."""
        return planning.plan_request(desires, simulations, self._version)

    async def ask(self, request: Mapping[str, Any]) -> Answer:
        """The plan if it is known; else start computing it and say so."""
        key = str(request["key"])
        record = await self.store.get_record(RECORD_KIND, key)
        if record is not None:
            return _answer(key, json.loads(record.data))
        if key in self._pending:
            return Answer("computing", key)
        if not self.installed:
            return Answer("problem", key, problem={"path": planning.CAPACITY, "message": planning.INSTALL_HINT})
        if len(self._pending) >= self.max_pending:
            raise PlansBusy(f"{len(self._pending)} plans are being computed; ask again in a few seconds")
        self._pending[key] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(dict(request))
        self.prepare()
        return Answer("computing", key)

    async def wait(self, request: Mapping[str, Any], timeout: float) -> Answer:
        """``ask``, then wait for the worker (callers that can wait)."""
        answer = await self.ask(request)
        future = self._pending.get(answer.key)
        if answer.state == "computing" and future is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(future), timeout)
            answer = await self.ask(request)
        return answer

    def prepare(self) -> None:
        """Start the worker (it loads the planner at once, ahead of the first plan)."""
        if self.installed and self._worker is None:
            self._worker = asyncio.create_task(self._work(), name="plans")

    async def _work(self) -> None:
        while True:
            request = await self._queue.get()
            key = str(request["key"])
            try:
                result = await self._compute(request)
            except (OSError, ValueError, asyncio.IncompleteReadError) as e:
                log.error("event=plan_failed key=%s error=%r", key, e)
                await self._end_child()  # a new one for the next plan
                result = None
            future = self._pending.pop(key, None)
            if result is None:
                if future is not None and not future.done():
                    future.cancel()
                continue
            await self._cache(key, result)
            if future is not None and not future.done():
                future.set_result(result)

    async def _compute(self, request: Mapping[str, Any]) -> dict[str, Any]:
        child = await self._ensure_child()
        assert child.stdin is not None and child.stdout is not None
        child.stdin.write(json.dumps(request).encode() + b"\n")
        await child.stdin.drain()
        line = await child.stdout.readline()
        if not line:
            raise OSError(f"the plan worker (pid {child.pid}) ended")
        result: dict[str, Any] = json.loads(line)
        return result

    async def _ensure_child(self) -> asyncio.subprocess.Process:
        if self._child is None or self._child.returncode is not None:
            self._child = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "xds_server.deploy.plan_worker",
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, limit=_LINE_LIMIT,
            )  # fmt: skip
            log.info("event=plan_worker_started pid=%d", self._child.pid)
        return self._child

    async def _cache(self, key: str, result: Mapping[str, Any]) -> None:
        try:
            await self.store.put_record(RECORD_KIND, key, json.dumps(result, separators=(",", ":")),
                                        base_version=None)  # fmt: skip
        except RecordConflict:
            pass  # another replica computed it too: the same plan
        except StoreError as e:
            log.error("event=plan_not_cached key=%s error=%s", key, e)
        log.info("event=plan_computed key=%s compute_s=%s problem=%s", key, result.get("compute_s", "-"),
                 "problem" in result)  # fmt: skip

    async def _end_child(self) -> None:
        child, self._child = self._child, None
        if child is None or child.returncode is not None:
            return
        child.kill()  # ours, by its PID; a plan in progress is not waited for
        await child.wait()

    async def close(self) -> None:
        worker, self._worker = self._worker, None
        if worker is not None:
            worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await worker
        for future in self._pending.values():
            future.cancel()
        self._pending.clear()
        await self._end_child()


def _answer(key: str, data: Mapping[str, Any]) -> Answer:
    if "problem" in data:
        return Answer("problem", key, problem=data["problem"])
    return Answer("ready", key, plan=data)


def main() -> None:
    """The worker: load the planner, then plan each request line until stdin ends."""
    with contextlib.suppress(OSError):
        os.nice(_NICE)
    planning.warm()
    for line in sys.stdin:
        try:
            result = planning.compute(json.loads(line))
        except Exception as e:  # a request the worker cannot read: answered, never fatal
            result = {"problem": {"path": planning.CAPACITY, "message": f"{type(e).__name__}: {e}"[:300]}}
        sys.stdout.write(json.dumps(result, separators=(",", ":")) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
