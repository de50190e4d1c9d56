"""One load-generator process of ``dgw bench rollout``: many sidecar-like agents.

Each node follows its shard's config over ``dgw.v1.Gateway/WatchConfig`` and, for
every config it is sent, reports (``Report``) that it runs it with its DALs healthy,
as a sidecar does once it has recreated them: what a rollout's wave waits for. The
orchestrator drives it over a pipe (``bench.procs.serve_pipe``): ``start`` (every node
has reported once), ``stop``.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import grpc

from bench.procs import serve_pipe
from dgw_api.v1 import gateway_pb2, gateway_pb2_grpc
from testkit.procs import raise_open_files_limit

_RETRY_S = 0.5


@dataclass
class ReportSpec:
    address: str
    nodes: list[tuple[str, str]]  # (node_id, shard)
    channels: int = 16


class Agents:
    def __init__(self, spec: ReportSpec):
        self.spec = spec
        self.channels = [grpc.aio.insecure_channel(spec.address) for _ in range(spec.channels)]
        self.reported: dict[str, str] = {}
        self.reports = 0
        self.tasks: list[asyncio.Task[None]] = []
        self._all_reported = asyncio.Event()

    async def start(self, timeout: float) -> dict[str, Any]:
        for i, (node_id, shard) in enumerate(self.spec.nodes):
            stub = gateway_pb2_grpc.GatewayStub(self.channels[i % len(self.channels)])  # type: ignore[no-untyped-call]
            self.tasks.append(asyncio.create_task(self._node(stub, shard, node_id)))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._all_reported.wait(), timeout)
        return {"reported": len(self.reported), "nodes": len(self.spec.nodes)}

    async def _node(self, stub: Any, shard: str, node_id: str) -> None:
        endpoints = [gateway_pb2.Endpoint(dal="thrift", listener=listener, address="127.0.0.1", port=port,
                                          health=gateway_pb2.HEALTHY)
                     for listener, port in (("api", 20001), ("secure_grpc", 20002))]  # fmt: skip
        while True:
            try:
                async for config in stub.WatchConfig(gateway_pb2.WatchRequest(shard=shard, node_id=node_id)):
                    await stub.Report(gateway_pb2.NodeReport(
                        shard=shard, node_id=node_id, endpoints=endpoints, host_address="127.0.0.1",
                        status={"config_version": config.version},
                        location=gateway_pb2.Location(account="bench", region="local")))
                    self.reported[node_id] = config.version
                    self.reports += 1
                    if len(self.reported) == len(self.spec.nodes):
                        self._all_reported.set()
            except grpc.aio.AioRpcError:
                await asyncio.sleep(_RETRY_S)

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for channel in self.channels:
            await channel.close(None)


async def _serve(conn: Connection, spec: ReportSpec) -> None:
    agents = Agents(spec)
    await serve_pipe(conn, {"start": agents.start, "counters": lambda: {"reports": agents.reports}}, agents.close)


def report_main(conn: Connection, spec: ReportSpec) -> None:
    """The worker process's entry point (``multiprocessing``, spawn start method)."""
    raise_open_files_limit()
    try:
        asyncio.run(_serve(conn, spec))
    except (EOFError, KeyboardInterrupt):
        pass
