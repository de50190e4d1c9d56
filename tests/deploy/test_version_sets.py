"""Version sets on the change path: resolved when a version is stored, refused at the
artifact's key path, recorded with the version, kept across unrelated edits and
restarts, run again by a rollback, moved only on purpose (a rollout's pins)."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from xds_server.cache import SnapshotCache
from xds_server.changes import BatchItem, Changes, Done, Invalid, Request
from xds_server.deploy.artifacts import Build, config_version
from xds_server.deploy.index import ArtifactIndex
from xds_server.shards import ShardRegistry
from xds_server.store import SqliteStore

D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64
ME = Request("tester")


def shard(ref: str = "{kind: branch, value: main}", env: str = "a") -> str:
    return f"""\
proxy_config:
  public_listeners:
    api: {{mode: http, path: 18080}}
container_dals:
  kv:
    image: dgw-kv:test
    container_listeners: {{api: 18081}}
    env: {{X: {env}}}
deploy_desires:
  service_tier: 2
  version_set:
    artifacts:
      dals/dgw-kv: {ref}
      configs/main: {{kind: branch, sha: ${{DGW_CONFIG_VERSION}}}}
"""


async def open_changes(data: Path) -> tuple[Changes, SqliteStore]:
    store = await SqliteStore.open(data)
    changes = Changes(store, ShardRegistry(SnapshotCache()))
    await changes.load()
    return changes, store


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[tuple[Changes, ArtifactIndex]]:
    changes, store = await open_changes(tmp_path / "data")
    try:
        yield changes, ArtifactIndex(store)
    finally:
        await store.close()


def image(digest: str, *refs: str) -> Build:
    return Build(digest, "image", "dgw-kv:test", "2026-01-01T00:00:00+00:00", "tester", refs)


def served_digest(changes: Changes, name: str = "kv") -> str:
    return changes.registry.shards[name].pins["dals/dgw-kv"].digest


async def test_an_unknown_artifact_is_refused_at_its_key_path(world):
    changes, _ = world
    with pytest.raises(Invalid) as e:
        await changes.put("kv", shard(), 0, ME)
    assert [p.path for p in e.value.problems] == ["deploy_desires.version_set.artifacts.dals/dgw-kv"]
    assert "no artifact dals/dgw-kv in the artifact index" in e.value.problems[0].message
    assert "kv" not in changes.registry.shards and await changes.store.get("kv") is None


async def test_pins_are_resolved_when_stored_and_kept_until_their_entry_changes(world):
    changes, index = world
    await index.push("dals/dgw-kv", image(D1, "branch/main", "tag/v1"))
    await changes.put("kv", shard(), 0, ME)
    assert served_digest(changes) == D1
    assert changes.registry.shards["kv"].pins["configs/main"].digest == config_version(shard())
    await index.push("dals/dgw-kv", image(D2, "branch/main", "tag/v2"))
    # An edit that leaves the artifact's entry alone keeps its pin: the branch moved,
    # what runs did not.
    await changes.put("kv", shard(env="b"), 1, ME)
    assert served_digest(changes) == D1
    await changes.put("kv", shard("{kind: tag, value: v2}", env="b"), 2, ME)
    assert served_digest(changes) == D2
    # A rollback runs the pins that version ran.
    await changes.rollback("kv", 1, 3, ME)
    assert served_digest(changes) == D1
    assert (await changes.store.get("kv")).meta.number == 4


async def test_the_same_text_is_unchanged_and_explicit_pins_move_it(world):
    changes, index = world
    await index.push("dals/dgw-kv", image(D1, "branch/main"))
    await changes.put("kv", shard(), 0, ME)
    await index.push("dals/dgw-kv", image(D2, "branch/main"))
    again = await changes.put("kv", shard(), 1, ME)
    assert isinstance(again, Done) and again.unchanged and served_digest(changes) == D1
    fresh = dict(changes.registry.shards["kv"].pins)
    fresh["dals/dgw-kv"] = dataclasses.replace(fresh["dals/dgw-kv"], digest=D2)
    before = changes.registry.shards["kv"].config_version
    [moved] = await changes.put_many([BatchItem("kv", shard(), 1, fresh)], ME)
    assert isinstance(moved, Done) and not moved.unchanged and moved.version.number == 2
    assert served_digest(changes) == D2 and changes.registry.shards["kv"].config_version != before
    [same] = await changes.put_many([BatchItem("kv", shard(), 2, fresh)], ME)
    assert isinstance(same, Done) and same.unchanged


async def test_a_restarted_server_runs_the_recorded_pins(tmp_path: Path):
    changes, store = await open_changes(tmp_path / "data")
    index = ArtifactIndex(store)
    await index.push("dals/dgw-kv", image(D1, "branch/main"))
    await changes.put("kv", shard(), 0, ME)
    await index.push("dals/dgw-kv", image(D2, "branch/main"))
    version = changes.registry.shards["kv"].config_version
    await store.close()
    changes, store = await open_changes(tmp_path / "data")
    try:
        assert served_digest(changes) == D1
        assert changes.registry.shards["kv"].config_version == version
    finally:
        await store.close()


async def test_the_config_version_is_read_from_the_file_and_not_masked(world):
    changes, index = world
    await index.push("dals/dgw-kv", image(D1, "branch/main"))
    await changes.put("kv", shard(), 0, ME)
    state = changes.registry.shards["kv"]
    own = config_version(shard())
    assert state.config.deploy_desires.version_set.artifacts["configs/main"].sha == own
    assert own not in state.secrets
