"""Following the config: the cache a restarted agent starts from, and its mode."""

from __future__ import annotations

import json
import stat

import yaml

from dgw_api.v1 import gateway_pb2
from sidecar.config_follower import CACHE_FILE, ConfigFollower
from sidecar.control import Connected, Disconnected
from sidecar.log import EventLog

CONFIG = yaml.safe_dump({
    "container_dals": {"cql": {"image": "dgw-sample-dal:test", "container_listeners": {"a": 80},
                               "env": {"DB_URL": "postgresql://u:s3cret@127.0.0.1/db"}}},
})


def follower(tmp_path, changes):
    return ConfigFollower("kv", tmp_path, EventLog("dgw.sidecar.test"), changes.append)


async def events(*items):
    for item in items:
        yield item


async def test_config_from_the_server_is_cached_owner_only(tmp_path):
    changes: list[str] = []
    f = follower(tmp_path, changes)
    await f.follow(events(Connected(), gateway_pb2.ShardConfig(shard="kv", version="v1", yaml=CONFIG),
                          Disconnected("gone", 0.1)))
    assert f.version == "v1" and set(f.config.container_dals) == {"cql"} and not f.connected
    assert changes == ["control connected", "config changed", "control disconnected"]
    cache = tmp_path / CACHE_FILE
    assert stat.S_IMODE(cache.stat().st_mode) == 0o600
    assert json.loads(cache.read_text()) == {"version": "v1", "yaml": CONFIG}
    assert list(tmp_path.iterdir()) == [cache]  # no temporary file left


async def test_a_restarted_follower_starts_from_the_cache_and_tightens_an_old_one(tmp_path):
    cache = tmp_path / CACHE_FILE
    cache.write_text(json.dumps({"version": "v7", "yaml": CONFIG}))
    cache.chmod(0o644)  # as older agents wrote it
    changes: list[str] = []
    f = follower(tmp_path, changes)
    f.load_cache()
    assert f.version == "v7" and "cql" in f.config.container_dals
    assert changes == ["config changed"]
    assert stat.S_IMODE(cache.stat().st_mode) == 0o600


async def test_the_same_version_again_changes_nothing_and_a_bad_config_is_refused(tmp_path):
    changes: list[str] = []
    f = follower(tmp_path, changes)
    v1 = gateway_pb2.ShardConfig(shard="kv", version="v1", yaml=CONFIG)
    bad = gateway_pb2.ShardConfig(shard="kv", version="v2", yaml="container_dals: [")
    await f.follow(events(v1, v1, bad))
    assert changes == ["config changed"] and f.version == "v1"


def test_an_unreadable_cache_is_ignored(tmp_path):
    (tmp_path / CACHE_FILE).write_text("{not json")
    changes: list[str] = []
    f = follower(tmp_path, changes)
    f.load_cache()
    assert f.config is None and changes == []
