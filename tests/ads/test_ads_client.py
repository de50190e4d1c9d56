"""The Envoy-like client against the real server: convergence, NACKs, restarts, and a
200-stream fan-out sanity check."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest

from testkit.ads_client import XdsClient
from tests.ads.ads_samples import basic
from tests.ads.ads_wait import eventually
from tests.ads.conftest import Ads
from xds_server.cache import SnapshotCache
from xds_server.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE

TYPES = (CLUSTER, ENDPOINT, LISTENER, ROUTE)


def converged(cache: SnapshotCache) -> bool:
    """Every connected node has ACKed everything it was sent, and no NACK."""
    return all(
        t.acked_version == t.sent_version and t.last_nack is None
        for s in cache.node_status()
        for t in s.types.values()
    )


@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
async def test_client_follows_clusters_and_listeners_to_endpoints_and_routes(
    ads: Ads, delta: bool
) -> None:
    ads.cache.set_shard("s1", basic(routes={"r1": "c1", "unused": "c2"}))
    client = XdsClient(ads.channel, "n1", "s1", delta=delta)
    await client.start()
    try:
        await client.wait_for(lambda c: all(c.types[t].resources for t in TYPES))
        assert sorted(client.types[ENDPOINT].resources) == ["c1", "c2"]
        assert sorted(client.types[ROUTE].resources) == ["r1"]
        await eventually(lambda: converged(ads.cache))
        versions = ads.cache.shard_versions("s1")
        assert client.version(CLUSTER) == versions[CLUSTER]
        assert client.version(LISTENER) == versions[LISTENER]

        ads.cache.set_shard("s1", basic(clusters={"c1": 1000, "c2": 1000, "c3": 5}, endpoints={"c1": (1,), "c2": (2,), "c3": (3,)}))
        await client.wait_for(lambda c: "c3" in c.types[ENDPOINT].resources)
        await eventually(lambda: converged(ads.cache))
    finally:
        await client.stop()


@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
async def test_client_nack_keeps_its_version(ads: Ads, delta: bool) -> None:
    ads.cache.set_shard("s1", basic())
    refuse = {"on": False}
    client = XdsClient(
        ads.channel, "n1", "s1", delta=delta,
        reject=lambda t, r: "no thanks" if refuse["on"] and t == CLUSTER else None,
    )  # fmt: skip
    await client.start()
    try:
        await client.wait_for(lambda c: bool(c.version(ROUTE)))
        before = client.version(CLUSTER)
        refuse["on"] = True
        ads.cache.set_shard("s1", basic(clusters={"c1": 1, "c2": 1000}))
        await client.wait_for(lambda c: c.types[CLUSTER].nacks == 1)
        assert client.version(CLUSTER) == before
        await eventually(
            lambda: ads.cache.node_status()[0].types[CLUSTER].last_nack is not None
        )
        status = ads.cache.node_status()[0].types[CLUSTER]
        assert status.acked_version == before and status.last_nack.message == "no thanks"  # type: ignore[union-attr]
    finally:
        await client.stop()


@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
async def test_client_reconnects_to_a_restarted_server_without_resends(
    ads: Ads, start_server, delta: bool
) -> None:
    ads.cache.set_shard("s1", basic())
    client = XdsClient(ads.channel, "n1", "s1", delta=delta)
    await client.start()
    await client.wait_for(lambda c: bool(c.version(ROUTE)) and bool(c.version(ENDPOINT)))
    await client.stop()
    before = {t: dict(client.types[t].resources) for t in TYPES}
    await ads.server.stop(None)

    cache = SnapshotCache()
    cache.set_shard("s1", basic())
    server, address = await start_server(cache)
    client.channel = grpc.aio.insecure_channel(address)
    try:
        counts = {t: client.types[t].responses for t in TYPES}
        route_before = client.version(ROUTE)
        await client.start()
        # The server has handled every request of the reconnect once each type shows
        # the version the node reported (delta: once its one empty answer is ACKed).
        await eventually(
            lambda: len(cache.node_status()) == 1
            and all(cache.node_status()[0].type_status(t).acked_version for t in TYPES)
        )
        cache.set_shard("s1", basic(routes={"r1": "c2"}))  # then only routes change
        await client.wait_for(lambda c: c.version(ROUTE) != route_before)
        # Anything re-sent would have been written before this route update.
        first_answers = 1 if delta else 0  # delta answers each first request, empty
        assert {t: client.types[t].responses - counts[t] for t in TYPES} == {
            CLUSTER: first_answers, ENDPOINT: first_answers, LISTENER: first_answers,
            ROUTE: first_answers + 1,
        }  # fmt: skip
        assert {t: dict(client.types[t].resources) for t in (CLUSTER, ENDPOINT, LISTENER)} == {
            t: before[t] for t in (CLUSTER, ENDPOINT, LISTENER)
        }
    finally:
        await client.stop()
        await client.channel.close()
        await server.stop(None)


@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
async def test_one_edit_reaches_200_streams(ads: Ads, delta: bool) -> None:
    """Sanity, not a benchmark: 200 nodes of one shard all ACK a new version."""
    ads.cache.set_shard("s1", basic())
    channels = [grpc.aio.insecure_channel(ads.address) for _ in range(4)]
    clients = [
        XdsClient(channels[i % 4], f"n{i}", "s1", delta=delta, keep_payloads=False)
        for i in range(200)
    ]
    try:
        await asyncio.gather(*(c.start() for c in clients))
        await asyncio.wait_for(
            asyncio.gather(*(c.wait_for(lambda c: bool(c.version(ROUTE)), 10) for c in clients)),
            10,
        )
        await eventually(lambda: converged(ads.cache) and ads.cache.stats().streams == 200)

        started = time.perf_counter()
        ads.cache.set_shard("s1", basic(endpoints={"c1": (1234,), "c2": (9002,)}))
        target = ads.cache.shard_versions("s1")[ENDPOINT]
        await asyncio.wait_for(
            asyncio.gather(*(c.wait_for(lambda c: c.version(ENDPOINT) == target, 10) for c in clients)),
            10,
        )
        elapsed = time.perf_counter() - started
        print(f"\n200 {'delta' if delta else 'sotw'} streams: edit -> all received in {elapsed * 1000:.1f} ms")
        assert elapsed < 5
        await eventually(lambda: converged(ads.cache))
    finally:
        await asyncio.gather(*(c.stop() for c in clients))
        for ch in channels:
            await ch.close()
    await eventually(lambda: ads.cache.stats().streams == 0)
