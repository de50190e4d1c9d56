"""The real Envoy against the ADS server, over state of the world and delta: it ACKs
everything, a modified cluster does not stick warming, a NACK is recorded with Envoy's
own message, and added/removed clusters arrive."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from envoy_proxy import XDS_CLUSTER, EnvoyProcess, make_bootstrap
from tests.ads.ads_samples import resources
from tests.ads.ads_wait import eventually
from tests.ads.conftest import Ads
from tests.support.procs import free_port
from xds_server.cache import SnapshotCache
from xds_server.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE

pytestmark = pytest.mark.envoy

TYPES = (CLUSTER, ENDPOINT, LISTENER, ROUTE)


@pytest.fixture
def delta(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


@pytest.fixture
async def envoy(ads: Ads, delta: bool, tmp_path: Path) -> AsyncIterator[EnvoyProcess]:
    config = make_bootstrap("s1", "envoy-1", ads.address, delta)
    process = EnvoyProcess(config, tmp_path, concurrency=1)
    await process.start()
    try:
        yield process
    finally:
        await process.stop()


async def stat(envoy: EnvoyProcess, name: str) -> int:
    return (await envoy.admin.stats(f"^{name}$")).number(name)


def converged(cache: SnapshotCache) -> bool:
    statuses = cache.node_status()
    if len(statuses) != 1:
        return False
    versions = cache.shard_versions("s1")
    types = statuses[0].types
    return all(
        t in types
        and types[t].acked_version == types[t].sent_version
        and (t not in (CLUSTER, LISTENER) or types[t].acked_version == versions[t])
        for t in TYPES
    )


def config(clusters: dict[str, int], listener_port: int) -> object:
    return resources(
        clusters=clusters,
        endpoints={name: (9000 + i,) for i, name in enumerate(clusters)},
        listeners={"l1": (listener_port, "r1")},
        routes={"r1": next(iter(clusters))},
    )


@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"], indirect=True)
async def test_real_envoy_converges_warms_nacks_and_recovers(
    ads: Ads, envoy: EnvoyProcess, delta: bool
) -> None:
    port = free_port()
    ads.cache.set_shard("s1", config({"c1": 1000, "c2": 1000}, port))

    async def settled() -> None:
        await eventually(lambda: converged(ads.cache), timeout=15)
        for _ in range(300):  # a cluster stuck warming stays so for 15 s (initial fetch)
            if await stat(envoy, "cluster_manager.warming_clusters") == 0:
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"clusters still warming\n{envoy.log_tail()}")

    await settled()
    assert await envoy.admin.cluster_names() == {XDS_CLUSTER, "c1", "c2"}
    assert await stat(envoy, "listener_manager.total_listeners_active") == 1

    # A modified cluster with unchanged endpoints must not stick warming.
    ads.cache.set_shard("s1", config({"c1": 2000, "c2": 1000}, port))
    await settled()

    # An invalid cluster is rejected by Envoy, whose message is recorded.
    good = ads.cache.node_status()[0].types[CLUSTER].acked_version
    ads.cache.set_shard("s1", config({"c1": 0, "c2": 1000}, port))
    await eventually(lambda: ads.cache.node_status()[0].types[CLUSTER].last_nack is not None, 15)
    status = ads.cache.node_status()[0].types[CLUSTER]
    assert status.acked_version == good
    assert status.last_nack is not None and "connect_timeout" in status.last_nack.message

    # A newer valid version is taken; one cluster replaced by another.
    ads.cache.set_shard("s1", config({"c1": 3000, "c3": 1000}, port))
    await settled()
    assert await envoy.admin.cluster_names() == {XDS_CLUSTER, "c1", "c3"}
