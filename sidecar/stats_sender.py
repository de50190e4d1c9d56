"""Sends this host's Envoy stats to the xds_server every ``every_s``.

What is sent is ``envoy_proxy.stats``'s selection, read from Envoy's admin: the
server keeps a short history per node and judges traffic from it (``dgw stats``, a
migration's promotion steps, a rollout's waves). A sample that cannot be read (Envoy
starting, restarting) or sent (server away) is skipped: the next one carries the same
cumulative counters, so nothing is lost but resolution.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import grpc

from dgw_api.v1 import gateway_pb2
from envoy_proxy.errors import AdminUnavailable
from envoy_proxy.stats import Sample

from .log import EventLog

# (epoch, sample) of the Envoy running now, or None when none is.
Read = Callable[[], Awaitable[tuple[str, Sample] | None]]
Send = Callable[[gateway_pb2.EnvoyStats], Awaitable[object]]


def stats_message(shard: str, node_id: str, epoch: str, sample: Sample) -> gateway_pb2.EnvoyStats:
    return gateway_pb2.EnvoyStats(
        shard=shard,
        node_id=node_id,
        envoy_epoch=epoch,
        counters=sample.counters,
        histograms=[
            gateway_pb2.Histogram(name=name, bounds=h.bounds, counts=h.counts, total=h.total)
            for name, h in sorted(sample.histograms.items())
        ],
    )


class StatsSender:
    def __init__(self, read: Read, send: Send, *, shard: str, node_id: str, every_s: float,
                 log: EventLog) -> None:  # fmt: skip
        self._read, self._send = read, send
        self._shard, self._node = shard, node_id
        self._every = every_s
        self._log = log
        self._failing = False
        self.sent = 0  # samples the server took (tests wait on it)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._every)
            await self.send_once()

    async def send_once(self) -> bool:
        try:
            read = await self._read()
        except AdminUnavailable:
            return False
        if read is None:
            return False
        epoch, sample = read
        try:
            await self._send(stats_message(self._shard, self._node, epoch, sample))
        except grpc.aio.AioRpcError as e:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise asyncio.CancelledError from None
            # Once per outage: the server may be restarting, or not have our report yet.
            (self._log.debug if self._failing else self._log.info)(
                "stats_not_sent", error=f"{e.code().name}: {e.details()}"
            )
            self._failing = True
            return False
        self._failing = False
        self.sent += 1
        return True
