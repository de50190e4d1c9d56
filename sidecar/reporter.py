"""The one path reports take to the xds_server.

The reporter keeps the latest report and sends it: at once when asked (an endpoint
got worse, a DAL is about to be stopped: Envoy must hear before it happens), else
from its own loop when the report changed, and again every ``every_s`` (the server
may have restarted and lost it). A failed send is retried with jittered backoff.
Sends never overlap, so a newer report is never overtaken by an older one, and a
report is sent once per change (plus the periodic resend).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable

import grpc

from common.backoff import backoff_delay, jittered
from dgw_api.v1 import gateway_pb2

from .log import EventLog

Send = Callable[[gateway_pb2.NodeReport], Awaitable[object]]


class Reporter:
    def __init__(
        self,
        send: Send,
        *,
        every_s: float,
        retry_base_s: float,
        retry_max_s: float,
        log: EventLog,
        rng: random.Random | None = None,
    ):
        self._send = send
        self._every = every_s
        self._retry_base, self._retry_max = retry_base_s, retry_max_s
        self._log = log
        self._rng = rng or random.Random()
        self._latest: gateway_pb2.NodeReport | None = None
        self._dirty = asyncio.Event()
        self._lock = asyncio.Lock()
        self._failures = 0

    @property
    def latest(self) -> gateway_pb2.NodeReport | None:
        return self._latest

    @property
    def pending(self) -> bool:
        """A report is waiting for the loop to send it."""
        return self._dirty.is_set()

    async def publish(self, report: gateway_pb2.NodeReport, *, now: bool = False) -> None:
        """Make ``report`` the one to send; with ``now``, send it before returning."""
        if report == self._latest:
            return
        before, self._latest = self._latest, report
        self._log_change(before, report)
        if now:
            await self.send_latest()
        else:
            self._dirty.set()

    def resend(self) -> None:
        """Send the latest report again soon (the server may have lost it)."""
        if self._latest is not None:
            self._dirty.set()

    async def send_latest(self) -> bool:
        """Send the latest report now; on failure leave it to the loop's retries."""
        async with self._lock:
            report = self._latest
            if report is None:
                return True
            self._dirty.clear()
            try:
                await self._send(report)
            except grpc.aio.AioRpcError as e:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    # gRPC turned our own cancellation into a CANCELLED call: stop, don't retry.
                    raise asyncio.CancelledError from None
                self._failures += 1
                error = f"{e.code().name}: {e.details()}"
                # One warning per outage; the retries in between are debug noise.
                emit = self._log.warning if self._failures == 1 else self._log.debug
                emit("report_failed", error=error, attempt=self._failures)
                self._dirty.set()
                return False
            self._failures = 0
            return True

    async def run(self) -> None:
        """Send changes and periodic resends until cancelled."""
        while True:
            try:
                await asyncio.wait_for(self._dirty.wait(), self._every)
            except TimeoutError:
                pass  # the periodic resend
            else:
                if not self._dirty.is_set():
                    continue  # sent meanwhile by ``publish(now=True)``
            if not await self.send_latest():
                delay = jittered(
                    backoff_delay(self._failures, self._retry_base, self._retry_max), self._rng
                )
                await asyncio.sleep(delay)

    def _log_change(
        self, before: gateway_pb2.NodeReport | None, after: gateway_pb2.NodeReport
    ) -> None:
        old = {(e.dal, e.listener): e.health for e in before.endpoints} if before else {}
        for e in after.endpoints:
            if old.get((e.dal, e.listener)) != e.health:
                self._log.bind(dal=e.dal).info(
                    "endpoint_health", listener=e.listener, port=e.port,
                    health=gateway_pb2.Health.Name(e.health), message=e.message,
                )
        was = list(before.registrations) if before else []
        if was != list(after.registrations):
            if after.registrations:
                self._log.info("registered", addresses=",".join(after.registrations))
            elif was:
                self._log.info("deregistered", addresses=",".join(was),
                               reason=after.status.get("state", ""))
