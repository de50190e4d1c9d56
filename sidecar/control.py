"""The agent's channel to the xds_server (``dgw.v1.Gateway``): watch config, report.

``watch`` follows the shard's runtime config for as long as the agent runs: it
reconnects with jittered exponential backoff whenever the stream breaks, and tells
the caller so (the host keeps its last config meanwhile). ``report`` sends one
``NodeReport``; the caller resends the latest when a send fails.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc

from common.backoff import backoff_delay, jittered
from common.hostport import grpc_target, split_addresses
from dgw_api.v1 import gateway_pb2, gateway_pb2_grpc

from .log import EventLog


@dataclass(frozen=True)
class Connected:
    """The watch stream is (re)established; the server may have lost our report."""


@dataclass(frozen=True)
class Disconnected:
    error: str
    retry_in: float


WatchEvent = gateway_pb2.ShardConfig | Connected | Disconnected


def channel_target(servers: str, server_name: str) -> tuple[str, list[tuple[str, str]]]:
    """The gRPC target for ``--server`` and the options it needs. Several replicas
    (``a:18000,b:18000``) are one channel that connects to one of them, in an order
    shuffled per host (so hosts spread over the replicas) and to the next when it goes;
    their certificates are checked for ``server_name``, the name every replica's holds."""
    addresses = split_addresses(servers, "--server")
    if len(addresses) == 1:
        return servers, []
    pick_first = {"loadBalancingConfig": [{"pick_first": {"shuffleAddressList": True}}]}
    return grpc_target(addresses), [("grpc.ssl_target_name_override", server_name),
                                    ("grpc.service_config", json.dumps(pick_first))]


class ReconnectDelays:
    """Jittered exponential delays between reconnects: base, 2·base, … up to max;
    reset once a stream is up."""

    def __init__(self, base_s: float, max_s: float, rng: random.Random | None = None):
        self._base, self._max = base_s, max_s
        self._rng = rng or random.Random()
        self.attempts = 0

    def next(self) -> float:
        self.attempts += 1
        return jittered(backoff_delay(self.attempts, self._base, self._max), self._rng)

    def reset(self) -> None:
        self.attempts = 0


class ControlClient:
    def __init__(
        self,
        server: str,
        *,
        shard: str,
        node_id: str,
        reconnect_base_s: float,
        reconnect_max_s: float,
        rpc_timeout_s: float,
        log: EventLog,
        credentials: grpc.ChannelCredentials | None = None,
        server_name: str = "",
    ):
        self._server = server
        self._target, target_options = channel_target(server, server_name)
        self._shard = shard
        self._node = node_id
        self._rpc_timeout = rpc_timeout_s
        self._log = log
        self._delays = ReconnectDelays(reconnect_base_s, reconnect_max_s)
        max_ms = int(reconnect_max_s * 1000)
        self._options = [
            # gRPC's own reconnect backoff (1 s up to 120 s by default) would hide
            # a returning server from us for minutes: keep it within ours.
            ("grpc.initial_reconnect_backoff_ms", int(reconnect_base_s * 1000)),
            ("grpc.min_reconnect_backoff_ms", int(reconnect_base_s * 1000)),
            ("grpc.max_reconnect_backoff_ms", max_ms),
            ("grpc.keepalive_time_ms", 10_000),
            ("grpc.keepalive_timeout_ms", 5_000),
            ("grpc.keepalive_permit_without_calls", 1),
            *target_options,
        ]
        self._retired: set[asyncio.Task[None]] = set()
        self._channel = self._open(credentials)
        # The generated stub module has no type information.
        self._stub = gateway_pb2_grpc.GatewayStub(self._channel)  # type: ignore[no-untyped-call]
        self._generation = 0
        self._watch_call: Any = None

    def _open(self, credentials: grpc.ChannelCredentials | None) -> grpc.aio.Channel:
        if credentials is None:
            return grpc.aio.insecure_channel(self._target, options=self._options)
        return grpc.aio.secure_channel(self._target, credentials, options=self._options)

    def rotate(self, credentials: grpc.ChannelCredentials, grace_s: float = 1.0) -> None:
        """Use new credentials (a renewed certificate) from now on: a new channel; the
        old one is closed after ``grace_s``, and the watch moves over at once."""
        old = self._channel
        self._channel = self._open(credentials)
        self._stub = gateway_pb2_grpc.GatewayStub(self._channel)  # type: ignore[no-untyped-call]
        self._generation += 1
        if self._watch_call is not None:
            self._watch_call.cancel()  # the watch reconnects at once on the new channel
        task = asyncio.get_running_loop().create_task(old.close(grace_s))
        self._retired.add(task)
        task.add_done_callback(self._retired.discard)

    async def watch(self) -> AsyncIterator[WatchEvent]:
        """The shard's config, then every change; connection changes in between."""
        request = gateway_pb2.WatchRequest(shard=self._shard, node_id=self._node)
        down_since: float | None = None
        while True:
            generation = self._generation
            call = self._watch_call = self._stub.WatchConfig(request)
            try:
                first = True
                async for msg in call:
                    if first:
                        first = False
                        self._delays.reset()
                        self._log.info(
                            "control_connected", server=self._server,
                            down_s=None if down_since is None else time.monotonic() - down_since,
                        )
                        down_since = None
                        yield Connected()
                    yield msg
                error = "the server ended the stream"
            except grpc.aio.AioRpcError as e:
                # gRPC may turn our task's own cancellation into a CANCELLED call.
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise asyncio.CancelledError from None
                error = f"{e.code().name}: {e.details()}"
            except asyncio.CancelledError:
                # Our own rotate() cancelled the call; anything else is the task's end.
                task = asyncio.current_task()
                if generation == self._generation or (task is not None and task.cancelling()):
                    raise
            finally:
                call.cancel()
            if generation != self._generation:  # our own rotation ended it: reconnect now
                self._log.info("control_rotated", server=self._server)
                continue
            delay = self._delays.next()
            # One warning per outage; the retries in between are debug noise.
            emit = self._log.warning if down_since is None else self._log.debug
            emit("control_disconnected", server=self._server, error=error, retry_in=delay)
            if down_since is None:
                down_since = time.monotonic()
            yield Disconnected(error, delay)
            await asyncio.sleep(delay)

    async def report(self, report: gateway_pb2.NodeReport) -> int:
        """Send a report; returns its generation. Raises grpc.aio.AioRpcError."""
        ack = await self._stub.Report(report, timeout=self._rpc_timeout)
        return int(ack.generation)

    async def report_stats(self, stats: gateway_pb2.EnvoyStats) -> None:
        """Send a sample of this host's Envoy stats. Raises grpc.aio.AioRpcError."""
        await self._stub.ReportStats(stats, timeout=self._rpc_timeout)

    async def close(self) -> None:
        await self._channel.close(None)
        for task in list(self._retired):
            task.cancel()
