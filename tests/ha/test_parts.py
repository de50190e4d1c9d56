"""The parts of a replicated control plane that need no etcd: several control-plane
addresses, paced stream starts, node liveness hooks, and a replica following the
store (over SQLite here: ``Changes.follow`` works on any backend's watch)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest

from common.hostport import grpc_target, split_addresses
from dgw_api.v1 import gateway_pb2
from envoy_proxy.bootstrap import make_bootstrap
from sidecar.config import SidecarSettings
from sidecar.control import channel_target
from testkit.ads_client import XdsClient
from testkit.wait import eventually
from tests.support.server import running_server
from xds_server.ads.pacing import StartPacer
from xds_server.cache import SnapshotCache
from xds_server.changes import Changes, Request
from xds_server.resources import CLUSTER
from xds_server.settings import ServerSettings
from xds_server.shards import ShardRegistry
from xds_server.store import SqliteStore

SHARD_TEXT = """proxy_config:
  public_listeners:
    api: {mode: http, path: 18080}
network_dals:
  pg:
    listeners: {api: "http://127.0.0.1:%d"}
"""


def test_several_control_plane_addresses_are_one_target() -> None:
    assert split_addresses("10.9.0.1:18000") == [("10.9.0.1", 18000)]
    assert grpc_target(split_addresses("198.18.0.1:18000,198.18.0.2:18001")) == \
        "ipv4:198.18.0.1:18000,198.18.0.2:18001"
    assert grpc_target(split_addresses("[::1]:1,[::2]:2")) == "ipv6:[::1]:1,[::2]:2"
    assert grpc_target(split_addresses("cp.example:18000")) == "cp.example:18000"
    with pytest.raises(ValueError, match="several addresses must be IP addresses"):
        split_addresses("a.example:1,b.example:2")
    with pytest.raises(ValueError, match="not HOST:PORT"):
        split_addresses("198.18.0.1,198.18.0.2:1")


def test_the_bootstrap_names_every_replica_and_retries_quickly() -> None:
    config = make_bootstrap("kv", "n1", "198.18.0.1:18000,198.18.0.2:18000")
    (cluster,) = config["static_resources"]["clusters"]
    hosts = [e["endpoint"]["address"]["socket_address"] for e in cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]]
    assert hosts == [{"address": "198.18.0.1", "port_value": 18000}, {"address": "198.18.0.2", "port_value": 18000}]
    assert cluster["type"] == "STATIC"
    grpc = config["dynamic_resources"]["ads_config"]["grpc_services"][0]["envoy_grpc"]
    assert grpc["retry_policy"]["retry_back_off"] == {"base_interval": "0.25s", "max_interval": "5s"}


def test_a_sidecar_given_several_replicas_checks_their_shared_name(tmp_path: Path) -> None:
    settings = SidecarSettings(server="198.18.0.1:18000,198.18.0.2:18000", shard="kv", node_id="n1",
                               state_dir=tmp_path)  # fmt: skip
    assert settings.join_address == "198.18.0.1:18002,198.18.0.2:18002"
    assert settings.server_name == "xds-server.dgw.local"
    target, options = channel_target(settings.server, settings.server_name)
    assert target == "ipv4:198.18.0.1:18000,198.18.0.2:18000"
    assert ("grpc.ssl_target_name_override", "xds-server.dgw.local") in options
    assert any(k == "grpc.service_config" and "shuffleAddressList" in v for k, v in options)
    assert channel_target("127.0.0.1:18000", "x") == ("127.0.0.1:18000", [])


def test_stream_starts_are_paced_a_second_s_worth_at_once() -> None:
    now = [100.0]
    pacer = StartPacer(10, clock=lambda: now[0])
    assert [pacer.delay() for _ in range(10)] == [0.0] * 10  # a burst of one second's worth
    assert pacer.delay() == pytest.approx(0.0)
    assert pacer.delay() == pytest.approx(0.1)
    assert pacer.delay() == pytest.approx(0.2)
    now[0] += 5  # quiet for a while: the burst is back
    assert pacer.delay() == 0.0
    assert StartPacer(0).delay() == 0.0


class _Heard:
    def __init__(self) -> None:
        self.events: list[tuple[str, str, str]] = []

    def reported(self, report: gateway_pb2.NodeReport) -> None:
        self.events.append(("reported", report.shard, report.node_id))

    def sidecar_connected(self, shard: str, node_id: str) -> None:
        self.events.append(("connected", shard, node_id))

    def sidecar_gone(self, shard: str, node_id: str) -> None:
        self.events.append(("gone", shard, node_id))


async def test_the_registry_tells_liveness_of_reports_and_sidecar_connections() -> None:
    registry = ShardRegistry(SnapshotCache())
    heard = registry.liveness = _Heard()
    registry.report(gateway_pb2.NodeReport(shard="kv", node_id="n1"))
    registry.accept(gateway_pb2.NodeReport(shard="kv", node_id="n2"), 0.0)  # another replica's
    watch = registry.watch_config("kv", "n1")
    waiting = asyncio.ensure_future(anext(watch))
    await eventually(lambda: ("connected", "kv", "n1") in heard.events)
    waiting.cancel()  # the sidecar's stream ends
    await asyncio.gather(waiting, return_exceptions=True)
    await watch.aclose()
    assert heard.events == [("reported", "kv", "n1"), ("connected", "kv", "n1"), ("gone", "kv", "n1")]
    assert registry.forget("kv", "n2") and not registry.forget("kv", "n2")
    assert [n.report.node_id for _, n in registry.all_reports()] == ["n1"]


async def test_a_replica_serves_what_another_stores(tmp_path: Path) -> None:
    store = await SqliteStore.open(tmp_path)
    a = Changes(store, ShardRegistry(SnapshotCache()))
    b_registry = ShardRegistry(SnapshotCache())
    b = Changes(store, b_registry)
    following = asyncio.create_task(b.follow(await b.load()))
    try:
        done = await a.put("kv", SHARD_TEXT % 5432, 0, Request("alice"))
        await eventually(lambda: "kv" in b_registry.shards and b.heads["kv"] == done.version)  # type: ignore[union-attr]
        served = b_registry.shards["kv"].config_version
        assert served == a.registry.shards["kv"].config_version
        await a.put("kv", SHARD_TEXT % 5433, 1, Request("alice"))
        await eventually(lambda: b_registry.shards["kv"].config_version != served)
        await a.delete("kv", 2, Request("alice"), force=False)
        await eventually(lambda: "kv" not in b_registry.shards and "kv" not in b.heads)
    finally:
        following.cancel()
        await store.close()


async def test_a_connection_older_than_the_maximum_age_is_closed_so_its_node_reconnects(tmp_path: Path) -> None:
    shards = tmp_path / "shards"
    shards.mkdir()
    (shards / "kv.yaml").write_text(SHARD_TEXT % 5432)
    settings = ServerSettings(config_dir=shards, data_dir=tmp_path / "data", xds="127.0.0.1:0",
                              admin="127.0.0.1:0", insecure=True, watch=False,
                              max_connection_age_s=1.0, max_connection_age_grace_s=0.5)  # fmt: skip
    async with running_server(settings) as server:
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.xds_port}")
        client = XdsClient(channel, "n1", "kv")
        await client.start()
        await client.wait_for(lambda c: bool(c.version(CLUSTER)), 10)
        # The server's GOAWAY at ~1 s (±10 %), then 0.5 s of grace: the stream ends,
        # and the node reconnects (to whichever replica its channel picks).
        with pytest.raises(ConnectionError, match="stream ended"):
            await client.wait_for(lambda _: False, 10)
        await client.start()
        await client.wait_for(lambda c: bool(c.version(CLUSTER)), 10)
        await client.stop()
        await channel.close()
