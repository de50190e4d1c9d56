"""``GET /v1/status`` and ``GET /metrics`` as Envoy-like clients (testkit's xDS client)
connect, ACK, NACK and fall behind."""

from __future__ import annotations

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from testkit.ads_client import AdsCall, XdsClient, sotw_request
from testkit.wait import eventually
from tests.support.server import admin_token
from xds_server.api import fleet
from xds_server.resources import CLUSTER, LISTENER
from xds_server.server import XdsServer

from .conftest import SHARD, Api

TYPES = ("CDS", "EDS", "LDS", "RDS")


async def status(api: Api, token: str, shard: str = "kv") -> dict:
    code, body = await api.call("GET", f"/v1/status?shard={shard}", token)
    assert code == 200, body
    return body


async def scrape(api: Api, token: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    code, text = await api.call("GET", "/metrics", token)
    assert code == 200
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def write(server: XdsServer, port: int) -> None:
    (server.settings.config_dir / "kv.yaml").write_text(SHARD.replace("18080", str(port)))


@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
async def test_synced_then_nacked_with_the_message_then_synced_again(server: XdsServer, api: Api, delta: bool):
    token = admin_token(server)
    protocol = "delta" if delta else "sotw"
    before = await scrape(api, token)
    refuse = {"on": False}
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.xds_port}")
    client = XdsClient(channel, "n1", "kv", delta=delta,
                       reject=lambda t, r: "port 18090 is in use (test)" if refuse["on"] and t == LISTENER else None)
    await client.start()
    try:
        def row() -> dict:
            nodes = fleet.status(server.registry, "kv")["nodes"]
            assert len(nodes) == 1
            return nodes[0]

        async def until(check) -> dict:
            """The row once ``check`` holds (read in-process), then as the API says it."""
            await eventually(lambda: check(row()), timeout=10, what="a status row")
            nodes = (await status(api, token))["nodes"]
            assert len(nodes) == 1 and check(nodes[0]), nodes
            return nodes[0]

        synced = await until(lambda r: r["in_sync"] and all(r["types"][t]["state"] == "SYNCED" for t in TYPES))
        assert synced["protocol"] == protocol and synced["node"] == "n1" and synced["shard"] == "kv"
        assert synced["connected_since"]

        refuse["on"] = True
        write(server, 18090)
        nacked = await until(lambda r: r["types"]["LDS"]["state"] == "NACKED")
        assert nacked["types"]["LDS"]["nack"] == "port 18090 is in use (test)"
        assert nacked["in_sync"] is False
        assert nacked["types"]["CDS"]["state"] == "SYNCED"
        shards = (await status(api, token))["shards"]
        assert shards["kv"]["nodes"] == 1 and shards["kv"]["in_sync"] == 0

        refuse["on"] = False
        write(server, 18091)
        again = await until(lambda r: r["in_sync"])
        assert again["types"]["LDS"]["state"] == "SYNCED"
        assert again["types"]["LDS"]["nack"] == "port 18090 is in use (test)"  # the last NACK stays visible

        after = await scrape(api, token)

        def moved(name: str, **labels: str) -> float:
            key = (name, tuple(sorted(labels.items())))
            return after.get(key, 0.0) - before.get(key, 0.0)

        assert after[("dgw_xds_connected_streams", (("protocol", protocol), ("shard", "kv")))] == 1
        assert moved("dgw_xds_pushes_total", shard="kv", type="listeners") >= 3
        assert moved("dgw_xds_acks_total", shard="kv", type="listeners") >= 2
        assert moved("dgw_xds_nacks_total", shard="kv", type="listeners") == 1
        assert moved("dgw_xds_push_to_ack_seconds_count", type="clusters") >= 1
    finally:
        await client.stop()
        await channel.close()


async def test_a_node_that_does_not_ack_is_stale(server: XdsServer, api: Api):
    token = admin_token(server)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.xds_port}") as channel:
        call = AdsCall(channel)
        try:
            await call.send(sotw_request(CLUSTER, node=XdsClient(channel, "lazy", "kv").node))
            await call.recv()

            def stale() -> bool:
                nodes = fleet.status(server.registry, "kv")["nodes"]
                return bool(nodes) and nodes[0]["types"]["CDS"]["state"] == "STALE"

            await eventually(stale, timeout=10, what="CDS STALE")
            row = (await status(api, token))["nodes"][0]
            assert row["types"]["CDS"]["state"] == "STALE" and row["types"]["LDS"]["state"] == "NOT_SENT"
            assert row["in_sync"] is False
        finally:
            await call.close()
    await eventually(lambda: not server.cache.node_status())


async def test_rejected_configs_are_counted(server: XdsServer, api: Api):
    token = admin_token(server)
    before = await scrape(api, token)
    (server.settings.config_dir / "kv.yaml").write_text("proxy_config: {public_listeners: {api: {mode: nope}}}\n")
    await eventually(lambda: "kv" in server.registry.rejections, timeout=10)
    after = await scrape(api, token)
    key = ("dgw_configs_rejected_total", (("shard", "kv"),))
    assert after[key] - before.get(key, 0.0) == 1
