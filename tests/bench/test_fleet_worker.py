"""The load generator's nodes against a real in-process ADS server: they sync, ACK
every response with the right version, NACK only when told to, and report each
node's ACK time on the orchestrator's clock."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import grpc
import pytest

from bench.fleet import WIRINGS, expected_versions, shard_text
from bench.fleet_worker import Fleet, WorkerSpec
from testkit.wait import eventually
from xds_server.ads import AdsServer
from xds_server.cache import SnapshotCache
from xds_server.config import load_shard_text
from xds_server.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE
from xds_server.translate import TranslateOptions, translate

TYPES = (CLUSTER, ENDPOINT, LISTENER, ROUTE)
SHARDS = ("fleet-a", "fleet-b")


def resources(step: int):
    text = shard_text(WIRINGS[step], 18080, 18980)
    config = load_shard_text(text, "test.yaml", env={})
    return translate(config.runtime(), TranslateOptions(public_address="127.0.0.1")), expected_versions(text)


@pytest.fixture
async def server() -> AsyncIterator[tuple[SnapshotCache, str]]:
    cache = SnapshotCache()
    server = grpc.aio.server()
    AdsServer(cache).register(server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield cache, f"127.0.0.1:{port}"
    finally:
        await server.stop(None)


def spec(address: str, delta: bool, nodes: int = 20, **kw) -> WorkerSpec:
    members = [(f"node-{i:02d}", SHARDS[i % 2]) for i in range(nodes)]
    return WorkerSpec(address, members, delta, streams_per_channel=4, connect_batch=7, **kw)


@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
async def test_nodes_sync_and_ack_exactly_what_they_were_sent(server, delta: bool) -> None:
    cache, address = server
    initial, versions = resources(0)
    for shard in SHARDS:
        cache.set_shard(shard, initial)
    fleet = Fleet(spec(address, delta))
    try:
        answer = await fleet.connect({s: versions for s in SHARDS}, timeout=20)
        assert answer["synced"] == 20 and answer["failed_count"] == 0 and not answer["errors"]

        def all_acked() -> bool:
            statuses = cache.node_status()
            assert len(statuses) == 20
            for status in statuses:
                assert status.stream == ("delta" if delta else "sotw")
                for type_url in TYPES:
                    t = status.type_status(type_url)
                    assert t.acked_version == t.sent_version == versions[type_url], (status.node_id, type_url)
                    assert t.last_nack is None
            return True

        # A node's ACK is timed when written; the server records it a moment later.
        await eventually(all_acked, what="the server to record every node's ACK")
        counters = fleet.snapshot_counters()
        assert counters["acks"] == counters["responses"] > 0 and counters["nacks"] == 0
        assert counters["bytes"] > 0
    finally:
        await fleet.close()


@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
async def test_an_edit_reports_every_node_of_the_shard_and_only_those(server, delta: bool) -> None:
    cache, address = server
    initial, versions = resources(0)
    edited, new_versions = resources(1)
    assert new_versions[ROUTE] != versions[ROUTE] and new_versions[CLUSTER] == versions[CLUSTER]
    for shard in SHARDS:
        cache.set_shard(shard, initial)
    fleet = Fleet(spec(address, delta))
    try:
        await fleet.connect({s: versions for s in SHARDS}, timeout=20)
        t0 = time.time()
        cache.set_shard("fleet-a", edited)
        answer = await fleet.converge({"fleet-a": new_versions}, timeout=10, quiet=0.2)
        assert sorted(answer["acks"]) == [f"node-{i:02d}" for i in range(0, 20, 2)]
        assert answer["missing"] == [] and answer["nacks"] == 0
        assert all(t0 < at < time.time() for at in answer["acks"].values())
        # One route response per node of the edited shard; the other shard heard nothing.
        assert answer["responses"] == 10 and answer["bytes"] > 0

        def routes_acked() -> bool:
            for status in cache.node_status():
                route = status.type_status(ROUTE)
                expected = new_versions[ROUTE] if status.shard == "fleet-a" else versions[ROUTE]
                assert route.acked_version == route.sent_version == expected
            return True

        await eventually(routes_acked, what="the server to record the new routes' ACKs")
    finally:
        await fleet.close()


@pytest.mark.slow  # waits out the fleet's convergence deadline for the NACKing node
@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
async def test_a_nacking_node_is_reported_missing_and_keeps_its_version(server, delta: bool) -> None:
    cache, address = server
    initial, versions = resources(0)
    edited, new_versions = resources(2)
    for shard in SHARDS:
        cache.set_shard(shard, initial)
    fleet = Fleet(spec(address, delta, nack_nodes=frozenset({"node-00"})))
    try:
        answer = await fleet.connect({s: versions for s in SHARDS}, timeout=20)
        assert answer["synced"] == 20  # a NACKing node still accepts its first routes
        cache.set_shard("fleet-a", edited)
        answer = await fleet.converge({"fleet-a": new_versions}, timeout=3, quiet=0.2)
        assert answer["missing"] == ["node-00"] and answer["nacks"] == 1
        assert len(answer["acks"]) == 9

        def nack_recorded() -> bool:
            node = next(s for s in cache.node_status() if s.node_id == "node-00")
            route = node.type_status(ROUTE)
            assert route.acked_version == versions[ROUTE]
            assert route.last_nack is not None and "test NACK" in route.last_nack.message
            return True

        await eventually(nack_recorded, what="node-00's NACK in its status")
        assert fleet.nodes["node-00"].client.version(ROUTE) == versions[ROUTE]
    finally:
        await fleet.close()
