"""``/v1/shards/S`` speaks as ``/v1/nodes`` does: ISO 8601 times, and EDS versions per
node, each equal to what that node ACKed (issue 10, point 12). A real ``dgw server``
and an Envoy-like ADS client."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import grpc
import pytest

from testkit.ads_client import XdsClient
from tests.support.gateway import XdsServerProcess
from xds_server.resources import ENDPOINT

SHARD = {
    "proxy_config": {"public_listeners": {"api": {"mode": "http", "path": 18080}}},
    "container_dals": {"kv": {"image": "kv", "container_listeners": {"api": 8080}}},
}


def endpoint(port: int) -> dict:
    return {"dal": "kv", "listener": "api", "address": "127.0.0.1", "port": port, "health": "HEALTHY"}


@pytest.fixture
def server(tmp_path: Path) -> Iterator[XdsServerProcess]:
    process = XdsServerProcess(tmp_path)
    process.write_shard("kv", SHARD)
    process.start()
    try:
        yield process
    finally:
        process.stop()


def _acked_eds(server: XdsServerProcess, node_id: str) -> str | None:
    for node in server.get("/v1/nodes")["nodes"]:
        if node["node_id"] == node_id:
            return node["types"].get(ENDPOINT, {}).get("acked_version")
    return None


async def test_shard_view_times_are_iso_and_eds_versions_are_each_nodes(server: XdsServerProcess) -> None:
    server.report("kv", "n1", [endpoint(20001)])
    server.report("kv", "n2", [endpoint(20002)])
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.xds_port}") as channel:
        clients = [XdsClient(channel, n, "kv") for n in ("n1", "n2")]
        for client in clients:
            await client.start()
        try:
            deadline = time.monotonic() + 20
            while not all(_acked_eds(server, n) for n in ("n1", "n2")):
                assert time.monotonic() < deadline, server.get("/v1/nodes")
                await asyncio.sleep(0.05)
            acked = {n: _acked_eds(server, n) for n in ("n1", "n2")}
            shard = server.get("/v1/shards/kv")
        finally:
            for client in clients:
                await client.stop()

    versions = shard["node_endpoints_versions"]
    assert versions == acked
    assert versions["n1"] != versions["n2"]  # each node's EDS holds its own host's DALs
    assert ENDPOINT not in shard["xds_versions"]
    datetime.fromisoformat(shard["accepted_at"])
    for report in shard["reports"].values():
        datetime.fromisoformat(report["received_at"])

