"""The seam of a reconcile loop inside the server (rollouts, migrations): ``tick``
runs again after the seconds it returns, or at once when woken; a store that fails
is tried again after a second. ``start`` / ``stop`` are what a lone server calls at
start and stop, and what an HA owner job calls as it gains and loses its job."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from xds_server.store import StoreError

_STORE_RETRY_S = 1.0


class Loop:
    def __init__(self, name: str, tick: Callable[[], Awaitable[float]], log: logging.Logger) -> None:
        self.name = name
        self._tick = tick
        self._log = log
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self._task is not None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=self.name)

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def wake(self) -> None:
        self._wake.set()

    async def _run(self) -> None:
        while True:
            try:
                delay = await self._tick()
            except StoreError as e:
                self._log.error("event=%s_store_failed error=%s retry_s=%g", self.name, e, _STORE_RETRY_S)
                delay = _STORE_RETRY_S
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)
