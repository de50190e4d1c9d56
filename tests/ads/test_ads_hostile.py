"""Hostile ADS input (issue #9): bounded names per request and per stream, memory that
returns when the streams close, and a NACK storm whose log stays small."""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from envoy.config.core.v3.base_pb2 import Node

from testkit.ads_client import AdsCall, delta_request, make_node, sotw_request
from tests.ads.ads_samples import basic
from tests.ads.ads_script import Sotw
from tests.ads.ads_wait import eventually
from tests.ads.conftest import Ads
from tests.support.gateway import XdsServerProcess
from xds_server.resources import CLUSTER, ENDPOINT

pytestmark = pytest.mark.slow


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


async def _refused(call: AdsCall) -> tuple[grpc.StatusCode, str]:
    """The status the server ended ``call`` with (writes after its end may fail)."""
    code, details = await asyncio.wait_for(call.status(), 30)
    await call.close()
    return code, details


@pytest.fixture
def server(tmp_path: Path) -> Iterator[XdsServerProcess]:
    process = XdsServerProcess(tmp_path).start()
    try:
        yield process
    finally:
        process.stop()


async def _hostile_round(channel: grpc.aio.Channel, round_: int) -> None:
    # State of the world: 20 streams, each asking for 120,000 endpoint names.
    names = [f"hostile-{round_}-cluster-{i:07d}" for i in range(120_000)]
    for i in range(20):
        call = AdsCall(channel)
        await call.send(sotw_request(ENDPOINT, node=make_node(f"n{i}", "s1"), names=names))
        code, details = await _refused(call)
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "ads_limits.max_names_per_request" in details

    # Delta: 2,000,000 names in requests of 10,000 (each within the per-request limit).
    call = AdsCall(channel, delta=True)
    node: Node | None = make_node("delta", "s1")
    ended = asyncio.create_task(call.read())
    for chunk in range(200):
        batch = [f"hostile-{round_}-{chunk:03d}-{i:05d}" for i in range(10_000)]
        await call.send(delta_request(ENDPOINT, node=node, subscribe=batch))
        node = None
        # Stop writing once the server has ended the stream (a write after its end
        # would replace the server's status with a local one).
        await asyncio.wait([ended], timeout=0.2)
        if ended.done():
            break
    with contextlib.suppress(grpc.aio.AioRpcError):
        await ended
    code, details = await _refused(call)
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "ads_limits.max_names_per_stream" in details


async def test_huge_name_lists_are_refused_and_memory_returns(server: XdsServerProcess) -> None:
    assert server.child is not None
    pid = server.child.pid
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.xds_port}")
    try:
        warm = Sotw(channel)  # load every code path before the baseline
        await warm.request(CLUSTER)
        await warm.close()
        before = _rss_kib(pid)
        after = [before]
        for round_ in range(3):
            await _hostile_round(channel, round_)
            after.append(_rss_kib(pid))
    finally:
        await channel.close()
    # Before the limits one round cost +282 MB (SotW) and +300 MB (delta), never freed.
    # What stays is the allocators' slack (measured: +15-30 MB, flat after the second
    # round), reused by the next round: no stream's names outlive it.
    assert after[-1] - before < 48 * 1024, f"RSS by round: {after} KiB"


class _Sink(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.out = io.StringIO()

    def emit(self, record: logging.LogRecord) -> None:
        self.out.write(self.format(record) + "\n")


async def test_nack_storm_logs_a_bounded_message(ads: Ads) -> None:
    sink = _Sink()
    logger = logging.getLogger("xds_server.ads")
    logger.addHandler(sink)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    try:
        ads.cache.set_shard("s1", basic())
        s = Sotw(ads.channel)
        await s.request(CLUSTER)
        response = await s.recv(CLUSTER)
        huge = "e" * 1_000_000
        for _ in range(200):  # every one a NACK of our latest response
            await s.request(CLUSTER, nonce=response.nonce, error=huge)
        await eventually(lambda: sink.out.getvalue().count("event=nack") == 200, timeout=60)
        status = ads.cache.node_status()[0].types[CLUSTER]
        assert status.last_nack is not None and len(status.last_nack.message) < 2_200
        await s.close()
    finally:
        logger.removeHandler(sink)
        logger.setLevel(old_level)
    size = len(sink.out.getvalue())
    assert size < 200 * 2_500, f"{size} characters of log for 200 NACKs"  # 195 MB before
