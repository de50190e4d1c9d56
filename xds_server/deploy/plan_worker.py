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
import multiprocessing
import os
from collections.abc import Mapping
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal

from xds_server.store import ConfigStore, RecordConflict, StoreError

from . import planning

log = logging.getLogger("xds_server.deploy.plans")

RECORD_KIND = "plan"
MAX_PENDING = 64  # plans queued at most; more are refused until some are done
_NICE = 10


class PlansBusy(Exception):
    """Too many plans are being computed; try again shortly."""


@dataclass(frozen=True)
class Answer:
    state: Literal["ready", "computing", "problem"]
    key: str
    plan: Mapping[str, Any] | None = None
    problem: Mapping[str, str] | None = None


def _worker_start() -> None:
    with contextlib.suppress(OSError):
        os.nice(_NICE)
    planning.warm()


class PlanService:
    def __init__(self, store: ConfigStore, max_pending: int = MAX_PENDING):
        self.store = store
        self.max_pending = max_pending
        self._pool: ProcessPoolExecutor | None = None
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._keeping: set[asyncio.Future[None]] = set()
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
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._executor(), planning.compute, dict(request))
        self._pending[key] = future
        self._keeping.add(keeping := asyncio.ensure_future(self._keep(key, future)))
        keeping.add_done_callback(self._keeping.discard)
        return Answer("computing", key)

    async def wait(self, request: Mapping[str, Any], timeout: float) -> Answer:
        """``ask``, then wait for the worker (tests, and callers that can wait)."""
        answer = await self.ask(request)
        future = self._pending.get(answer.key)
        if answer.state == "computing" and future is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(future), timeout)
            answer = await self.ask(request)
        return answer

    async def _keep(self, key: str, future: asyncio.Future[dict[str, Any]]) -> None:
        try:
            result = await future
        except Exception as e:  # the worker died (killed, out of memory): not cached
            log.error("event=plan_failed key=%s error=%r", key, e)
            return
        finally:
            self._pending.pop(key, None)
        try:
            await self.store.put_record(RECORD_KIND, key, json.dumps(result, separators=(",", ":")),
                                        base_version=None)  # fmt: skip
        except RecordConflict:
            pass  # another replica computed it too: the same plan
        except StoreError as e:
            log.error("event=plan_not_cached key=%s error=%s", key, e)
        log.info("event=plan_computed key=%s compute_s=%s problem=%s", key, result.get("compute_s", "-"),
                 "problem" in result)  # fmt: skip

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            # spawn: the server's process holds gRPC and asyncio state a fork must not copy.
            self._pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                                             initializer=_worker_start)  # fmt: skip
        return self._pool

    def prepare(self) -> None:
        """Start the worker (and load the planner in it) ahead of the first plan."""
        if self.installed:
            self._executor().submit(planning.warm)

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        for future in self._pending.values():
            future.cancel()
        self._pending.clear()
        if pool is None:
            return
        # A plan in progress is not waited for: the worker is ended (it is ours).
        for process in list(getattr(pool, "_processes", {}).values()):
            process.terminate()
        await asyncio.to_thread(pool.shutdown, wait=True, cancel_futures=True)


def _answer(key: str, data: Mapping[str, Any]) -> Answer:
    if "problem" in data:
        return Answer("problem", key, problem=data["problem"])
    return Answer("ready", key, plan=data)
