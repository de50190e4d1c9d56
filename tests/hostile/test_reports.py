"""Hostile node reports: bad values, floods of names and shards, silent nodes, and
reports surviving a restart."""

from __future__ import annotations

import os
import stat
import time

import aiohttp
import pytest

from dgw_api.v1 import gateway_pb2
from tests.support.server import admin_headers
from xds_server.cache import SnapshotCache
from xds_server.config import load_shard_text
from xds_server.resources import ENDPOINT
from xds_server.server import XdsServer
from xds_server.shards import ShardRegistry
from xds_server.translate import DISCOVERY_SHARD

from .conftest import settings
from .corpus import GOOD


def report(node: str = "n1", shard: str = "kv", health: int = gateway_pb2.HEALTHY,
           registrations: tuple[str, ...] = ()) -> gateway_pb2.NodeReport:
    return gateway_pb2.NodeReport(
        shard=shard, node_id=node, host_address="127.0.0.1", registrations=list(registrations),
        endpoints=[gateway_pb2.Endpoint(dal="kv", listener="api", address="127.0.0.1",
                                        port=18081, health=health)],
    )


@pytest.fixture
def registry() -> ShardRegistry:
    r = ShardRegistry(SnapshotCache())
    r.apply("kv", load_shard_text(GOOD, "kv.yaml", env={}), "kv.yaml")
    return r


async def test_health_99_is_refused_and_not_stored(server: XdsServer):
    body = {"shard": "kv", "node_id": "n1", "endpoints": [
        {"dal": "kv", "listener": "api", "address": "127.0.0.1", "port": 18081, "health": 99}]}
    url = f"http://127.0.0.1:{server.admin_port}/v1/reports"
    async with aiohttp.ClientSession(headers=admin_headers(server)) as http, http.post(url, json=body) as r:
        assert r.status == 400
        assert "health 99 is not one of" in (await r.json())["error"]
    assert server.registry.shards["kv"].nodes == {}
    assert server.cache.view("kv", "n1") is server.cache.view("kv", "nobody")


async def test_huge_reports_for_made_up_shards_are_refused_unread(server: XdsServer):
    status = {f"k{i}": "x" * 1000 for i in range(3500)}  # 3.5 MB
    async with aiohttp.ClientSession(headers=admin_headers(server)) as http:
        for i in range(60):
            body = {"shard": f"made-up-{i}", "node_id": "n", "status": status}
            async with http.post(f"http://127.0.0.1:{server.admin_port}/v1/reports", json=body) as r:
                assert r.status == 413
    assert server.registry.all_reports() == []


def test_a_big_report_over_grpc_is_refused_by_size(registry):
    big = report()
    big.status.update({f"k{i}": "x" * 1000 for i in range(100)})
    with pytest.raises(ValueError, match="bytes; at most 65536"):
        registry.report(big)


def test_reports_for_unconfigured_shards_are_bounded(registry):
    limit = registry.limits.pending_report_nodes
    for i in range(limit):
        registry.report(report(f"n{i}", shard=f"unknown-{i % 7}"))
    with pytest.raises(ValueError, match=f"kept for at most {limit} nodes"):
        registry.report(report("one-more", shard="unknown-0"))
    registry.report(report("n0", shard="unknown-0"))  # a known node may report again


def test_twenty_thousand_registration_names_are_refused_fast(registry):
    flood = report(registrations=tuple(f"name-{i}.discovery" for i in range(20_000)))
    started = time.perf_counter()
    with pytest.raises(ValueError, match="at most"):  # refused by size first
        registry.report(flood)
    few_long = report(registrations=tuple(f"n{i}" for i in range(65)))
    with pytest.raises(ValueError, match="65 registrations; a report may have at most 64"):
        registry.report(few_long)
    assert time.perf_counter() - started < 0.5
    assert registry.shards["kv"].nodes == {}


def test_a_name_longer_than_the_limit_is_refused_and_quoted_short(registry):
    with pytest.raises(ValueError) as caught:
        registry.report(report(node="n" * 10_000))
    assert "longer than 253 characters" in str(caught.value)
    assert len(str(caught.value)) < 300


def test_silent_nodes_expire(registry):
    registered = GOOD + "registrations: [{address: kv.discovery}]\n"
    registry.apply("kv", load_shard_text(registered, "kv.yaml", env={}), "kv.yaml")
    registry.report(report("n1", registrations=("kv.discovery",)))
    registry.report(report("early", shard="later"))
    now = time.time()
    assert registry.expire_reports(now) == 0
    assert registry.expire_reports(now + registry.limits.report_ttl_s + 1) == 2
    assert registry.shards["kv"].nodes == {}
    assert registry.discovery("kv.discovery") == []
    assert registry.cache.view("kv", "n1") is registry.cache.view("kv", "nobody")
    assert registry.all_reports() == []
    assert ENDPOINT in registry.cache.shard_versions(DISCOVERY_SHARD)


async def test_reports_survive_a_restart_in_a_private_file(tmp_path):
    s = settings(tmp_path)
    (s.config_dir / "kv.yaml").write_text(GOOD)
    first = XdsServer(s)
    await first.start()
    try:
        first.registry.report(report("n1"))
        with_endpoints = first.cache.view("kv", "n1")
    finally:
        await first.stop()  # a kill -9 loses at most the last second: see test_restart
    path = tmp_path / "data" / "reports.json"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700

    second = XdsServer(s)
    await second.start()
    try:
        assert list(second.registry.shards["kv"].nodes) == ["n1"]
        assert second.registry.shards["kv"].nodes["n1"].generation == 1
        view = second.cache.view("kv", "n1")
        assert view is not None and with_endpoints is not None
        assert view[ENDPOINT].version == with_endpoints[ENDPOINT].version
        assert second.registry.report(report("n1")) == 2
    finally:
        await second.stop()


async def test_persisted_reports_older_than_the_ttl_are_dropped(tmp_path):
    s = settings(tmp_path)
    (s.config_dir / "kv.yaml").write_text(GOOD)
    first = XdsServer(s)
    await first.start()
    first.registry.report(report("n1"))
    first.registry.shards["kv"].nodes["n1"].received_at -= s.limits.report_ttl_s + 1
    await first.stop()
    second = XdsServer(s)
    await second.start()
    try:
        assert second.registry.shards["kv"].nodes == {}
    finally:
        await second.stop()


async def test_an_unreadable_reports_file_is_a_clean_start(tmp_path):
    s = settings(tmp_path)
    (s.config_dir / "kv.yaml").write_text(GOOD)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "reports.json").write_text("{not json")
    server = XdsServer(s)
    await server.start()
    try:
        assert server.registry.shards["kv"].nodes == {}
    finally:
        await server.stop()
