"""``kill -9`` of a ``dgw server`` child during a stream of API writes: after a
restart every acknowledged write is in the history, none half-written, the same
versions are served, and a reconnecting xDS client is sent nothing it already holds."""

from __future__ import annotations

import asyncio
import re
import threading
import time
from pathlib import Path

import grpc
import pytest

from testkit.ads_client import XdsClient
from testkit.wait import wait_until
from tests.support.gateway import XdsServerProcess
from xds_server.cache import SnapshotCache
from xds_server.config import load_shard_text
from xds_server.resources import CLUSTER, LISTENER, ROUTE
from xds_server.shards import ShardRegistry
from xds_server.store import content_hash

pytestmark = pytest.mark.slow

MAX_WRITES = 2_000
ACKED_BEFORE_KILL = 15


def text(n: int) -> str:
    return (
        "proxy_config:\n  public_listeners:\n    api: {mode: http, path: 18080}\n"
        "container_dals:\n  thrift: {container_listeners: {api: 18081}}\n"
        "  cql: {container_listeners: {api: 18082}}\n"
        f"wiring:\n  thrift: {{mode: split, target: cql, percent: {n % 100}}}\n"
        f"# write {n}\n"
    )


class Writer:
    """Sequential PUTs, each from the version the previous one made, until an error."""

    def __init__(self, server: XdsServerProcess, base: int):
        self.server, self.base = server, base
        self.acked: dict[int, str] = {}
        self.error = ""
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        deadline = time.monotonic() + 60
        for n in range(MAX_WRITES):
            if time.monotonic() > deadline:
                return
            body = text(n)
            try:
                status, answer = self.server.call("PUT", "/v1/shards/kv", {"yaml": body}, self.base)
            except OSError as e:
                self.error = repr(e)
                return
            assert status == 200, answer
            self.base = answer["version"]
            self.acked[self.base] = body


def expected_versions(shard_text: str) -> dict[str, str]:
    """The xDS versions any server computes for this text (content hashes)."""
    registry = ShardRegistry(SnapshotCache())
    registry.apply("kv", load_shard_text(shard_text, "kv", env={}), "kv")
    return registry.cache.shard_versions("kv")


async def synced(server: XdsServerProcess, client: XdsClient) -> None:
    want = server.shard("kv")["xds_versions"]
    await client.wait_for(lambda c: all(c.version(t) == want[t] for t in (CLUSTER, LISTENER, ROUTE)), 10)


async def test_kill_9_during_writes_loses_no_acknowledged_write(tmp_path: Path) -> None:
    server = XdsServerProcess(tmp_path).start()
    try:
        assert server.call("PUT", "/v1/shards/kv", {"yaml": text(0)}, 0)[0] == 200
        writer = Writer(server, 1)
        writer.thread.start()
        await asyncio.to_thread(wait_until, lambda: len(writer.acked) >= ACKED_BEFORE_KILL, 30,
                                what="acknowledged writes")  # fmt: skip
        assert server.child is not None
        server.child.kill()  # SIGKILL, mid-stream
        writer.thread.join(30)
        assert writer.error, "the writer must have seen the server die"

        server.start()
        history = server.get("/v1/shards/kv/history?limit=1000")["versions"]
        numbers = [v["version"] for v in history]
        assert numbers == list(range(len(numbers), 0, -1)), "versions are contiguous: none half-written"
        stored = {v["version"]: v["hash"] for v in history}
        for number, body in writer.acked.items():
            assert stored.get(number) == content_hash(body), f"acknowledged write {number} lost"
            assert server.get(f"/v1/shards/kv/versions/{number}")["yaml"] == body
        head = server.get(f"/v1/shards/kv/versions/{numbers[0]}")["yaml"]
        served = server.shard("kv")
        assert served["version"] == numbers[0]
        want = expected_versions(head)
        assert served["xds_versions"] == {t: want[t] for t in served["xds_versions"]}

        # An xDS client that holds the served config reconnects to a restarted server:
        # nothing is sent again (same content, same versions).
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.xds_port}") as channel:
            client = XdsClient(channel, "n1", "kv")
            await client.start()
            await synced(server, client)
            await client.stop()
            held = {t: client.types[t].responses for t in (CLUSTER, LISTENER, ROUTE)}
            server.child.kill()
            server.start()
            await client.start()
            await asyncio.to_thread(
                wait_until, lambda: any(n["node_id"] == "n1" for n in server.get("/v1/nodes")["nodes"]),
                10, what="n1 reconnected",
            )  # fmt: skip
            # A write that changes only the route: on one stream responses arrive in the
            # order they are sent, so once its RDS response is in, any resend of what
            # the client held would have arrived before it.
            percent = int(re.search(r"percent: (\d+)", head).group(1))
            changed = text(percent + 1)
            assert server.call("PUT", "/v1/shards/kv", {"yaml": changed}, numbers[0])[0] == 200
            await synced(server, client)
            after = {t: client.types[t].responses for t in held}
            assert after == {**held, ROUTE: held[ROUTE] + 1}
            await client.stop()
    finally:
        server.stop()
