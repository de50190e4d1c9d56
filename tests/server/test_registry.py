"""ShardRegistry and the config dir: accepted configs reach the cache, rejected ones
leave the running config in force, reports become per-node endpoints."""

from __future__ import annotations

import asyncio

import pytest

from dgw_api.v1 import gateway_pb2
from tests.ads.ads_wait import eventually
from xds_server.cache import SnapshotCache
from xds_server.config import ConfigError, load_shard_text
from xds_server.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE
from xds_server.shards import ShardRegistry
from xds_server.sources.config_dir import ConfigDir

GOOD = """
proxy_config:
  public_listeners:
    api: {mode: http, path: 18080}
container_dals:
  kv: {container_listeners: {api: 18081}}
registrations:
  - {address: "kv.discovery,kv.alt"}
"""


def report(node: str, health: int = gateway_pb2.HEALTHY, registrations=("kv.discovery",)) -> gateway_pb2.NodeReport:
    return gateway_pb2.NodeReport(
        shard="kv", node_id=node, host_address="127.0.0.1", registrations=list(registrations),
        endpoints=[gateway_pb2.Endpoint(dal="kv", listener="api", address="127.0.0.1", port=18081, health=health)],
    )


@pytest.fixture
def registry() -> ShardRegistry:
    return ShardRegistry(SnapshotCache())


def test_apply_installs_resources_and_same_config_is_a_noop(registry):
    assert registry.apply("kv", load_shard_text(GOOD, "kv.yaml"), "kv.yaml")
    versions = registry.cache.shard_versions("kv")
    assert {CLUSTER, LISTENER, ROUTE} <= set(versions)
    assert not registry.apply("kv", load_shard_text(GOOD, "kv.yaml"), "kv.yaml")
    assert registry.cache.shard_versions("kv") == versions


def test_untranslatable_config_is_rejected_and_running_config_stays(registry):
    registry.apply("kv", load_shard_text(GOOD, "kv.yaml"), "kv.yaml")
    running = registry.shards["kv"].config_version
    secure = GOOD.replace("{mode: http, path: 18080}", "{mode: http, path: 18080, tls_creds: vault}")
    with pytest.raises(ConfigError):
        registry.apply("kv", load_shard_text(secure, "kv.yaml"), "kv.yaml")
    assert registry.shards["kv"].config_version == running
    assert "tls_creds" in registry.rejections["kv"].errors[0]


def test_reports_become_node_endpoints_and_discovery(registry):
    registry.apply("kv", load_shard_text(GOOD, "kv.yaml"), "kv.yaml")
    assert registry.report(report("n1")) == 1
    assert registry.report(report("n1")) == 2
    assert [i["node_id"] for i in registry.discovery("kv.discovery")] == ["n1"]
    registry.report(report("n1", gateway_pb2.UNHEALTHY, registrations=()))
    assert registry.discovery("kv.discovery") == []


def test_report_before_config_is_kept_until_the_shard_exists(registry):
    registry.report(report("early"))
    registry.apply("kv", load_shard_text(GOOD, "kv.yaml"), "kv.yaml")
    assert "early" in registry.shards["kv"].nodes


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda r: setattr(r.endpoints[0], "address", "db.example"), "must be an IP address"),
        (lambda r: setattr(r.endpoints[0], "port", 0), "port 0"),
        (lambda r: setattr(r, "node_id", ""), "needs shard and node_id"),
    ],
)
def test_unusable_report_is_refused_and_previous_kept(registry, mutate, message):
    registry.apply("kv", load_shard_text(GOOD, "kv.yaml"), "kv.yaml")
    registry.report(report("n1"))
    bad = report("n1")
    mutate(bad)
    with pytest.raises(ValueError, match=message):
        registry.report(bad)
    assert registry.shards["kv"].nodes["n1"].generation == 1


def test_config_dir_rejects_a_bad_edit_and_removes_deleted_shards(registry, tmp_path):
    (tmp_path / "kv.yaml").write_text(GOOD)
    (tmp_path / "notes.txt").write_text("ignored")
    source = ConfigDir(tmp_path, registry)
    source.load_all()
    running = registry.shards["kv"].config_version

    (tmp_path / "kv.yaml").write_text(GOOD.replace("mode: http", "mode: udp"))
    source.load(tmp_path / "kv.yaml")
    assert registry.shards["kv"].config_version == running
    assert "mode: 'udp' is not allowed" in registry.rejections["kv"].errors[0]

    (tmp_path / "kv.yaml").unlink()
    source.load(tmp_path / "kv.yaml")
    assert "kv" not in registry.shards


async def test_watch_config_yields_now_and_after_each_change(registry):
    registry.apply("kv", load_shard_text(GOOD, "kv.yaml"), "kv.yaml")
    seen: list[str] = []

    async def watch():
        async for state in registry.watch_config("kv"):
            seen.append(state.config_version)
            if len(seen) == 2:
                return

    task = asyncio.create_task(watch())
    await eventually(lambda: len(seen) == 1, 2)
    registry.apply("kv", load_shard_text(GOOD.replace("18081", "18082"), "kv.yaml"), "kv.yaml")
    await asyncio.wait_for(task, 2)
    assert seen[0] != seen[1]


def test_registrations_are_published_as_discovery_eds(registry):
    from xds_server.translate import DISCOVERY_SHARD

    registry.apply("kv", load_shard_text(GOOD, "kv.yaml"), "kv.yaml")
    declared = registry.cache.shard_versions(DISCOVERY_SHARD)
    assert ENDPOINT in declared, "discovery names are published as soon as the config declares them"

    registry.report(report("n1"))
    assert registry.cache.shard_versions(DISCOVERY_SHARD)[ENDPOINT] != declared[ENDPOINT]
    assert registry.discovery("kv.discovery") == [
        {"shard": "kv", "node_id": "n1", "address": "127.0.0.1", "ports": {"api": 18080}}
    ]
    registry.report(report("n1", registrations=()))
    assert registry.cache.shard_versions(DISCOVERY_SHARD)[ENDPOINT] == declared[ENDPOINT]


def test_registration_needs_an_ip_host_address(registry):
    bad = report("n1")
    bad.host_address = "gateway.local"
    with pytest.raises(ValueError, match="host_address"):
        registry.report(bad)


def test_discovery_re_encodes_only_the_names_a_report_touches(registry, monkeypatch):
    wide = GOOD.replace('"kv.discovery,kv.alt"', '"kv.discovery,kv.alt,' +
                        ",".join(f"other{i}" for i in range(50)) + '"')
    registry.apply("kv", load_shard_text(wide, "kv.yaml"), "kv.yaml")
    published: list[set[str]] = []
    real = registry.cache.update_resources

    def spy(shard, type_url, changed):
        published.append(set(changed))
        return real(shard, type_url, changed)

    monkeypatch.setattr(registry.cache, "update_resources", spy)
    registry.report(report("n1", registrations=("kv.alt",)))
    assert published == [{"kv.alt/api"}]
