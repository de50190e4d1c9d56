"""The one send path: each report goes out once per change, at once when urgent,
retried with backoff when the server does not take it."""

from __future__ import annotations

import asyncio
import random

import grpc
import pytest

from dgw_api.v1 import gateway_pb2
from sidecar.log import EventLog
from sidecar.reporter import Reporter

from .fakes import until


def report(health: int) -> gateway_pb2.NodeReport:
    return gateway_pb2.NodeReport(
        shard="kv", node_id="n1",
        endpoints=[gateway_pb2.Endpoint(dal="cql", listener="api", port=1, health=health)],
    )


class Server:
    def __init__(self) -> None:
        self.got: list[gateway_pb2.NodeReport] = []
        self.down = False

    async def send(self, r: gateway_pb2.NodeReport) -> None:
        if self.down:
            raise grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(),
                                       grpc.aio.Metadata(), "connection refused")
        self.got.append(r)


async def drain_ready_tasks() -> None:
    """Let every task that is ready run until none is (no clock involved)."""
    for _ in range(20):
        await asyncio.sleep(0)


@pytest.fixture
async def running():
    server = Server()
    reporter = Reporter(server.send, every_s=3600, retry_base_s=0.01, retry_max_s=0.02,
                        log=EventLog("dgw.sidecar.test"), rng=random.Random(1))
    task = asyncio.create_task(reporter.run())
    yield server, reporter
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_a_change_is_sent_once_by_the_loop(running):
    server, reporter = running
    await reporter.publish(report(gateway_pb2.HEALTHY))
    await until(lambda: len(server.got) == 1, what="the first report")
    await reporter.publish(report(gateway_pb2.HEALTHY))  # unchanged: nothing to send
    await drain_ready_tasks()
    assert server.got == [report(gateway_pb2.HEALTHY)] and not reporter.pending


async def test_an_urgent_report_is_sent_before_publish_returns_and_only_once(running):
    server, reporter = running
    await reporter.publish(report(gateway_pb2.HEALTHY))
    await until(lambda: len(server.got) == 1, what="the first report")
    await reporter.publish(report(gateway_pb2.UNHEALTHY), now=True)
    assert server.got[-1] == report(gateway_pb2.UNHEALTHY)
    await drain_ready_tasks()
    assert server.got == [report(gateway_pb2.HEALTHY), report(gateway_pb2.UNHEALTHY)]


async def test_an_urgent_report_right_after_a_queued_one_is_not_sent_twice(running):
    server, reporter = running
    await reporter.publish(report(gateway_pb2.STARTING))  # queued for the loop
    await reporter.publish(report(gateway_pb2.UNHEALTHY), now=True)  # overtakes it
    await drain_ready_tasks()
    assert server.got == [report(gateway_pb2.UNHEALTHY)]


async def test_a_failed_send_is_retried_until_the_server_takes_it(running):
    server, reporter = running
    server.down = True
    await reporter.publish(report(gateway_pb2.HEALTHY), now=True)
    assert server.got == [] and reporter.pending
    server.down = False
    await until(lambda: server.got == [report(gateway_pb2.HEALTHY)], what="the retry")
    await drain_ready_tasks()
    assert len(server.got) == 1 and not reporter.pending


async def test_resend_sends_the_latest_again(running):
    server, reporter = running
    reporter.resend()  # nothing yet: nothing to send
    await drain_ready_tasks()
    assert server.got == []
    await reporter.publish(report(gateway_pb2.HEALTHY), now=True)
    reporter.resend()
    await until(lambda: len(server.got) == 2, what="the resend")
    assert server.got[0] == server.got[1]
