"""The config path does each thing once: checks run in the loader only, an unchanged
config is not translated again, a file is read once at start-up."""

from __future__ import annotations

import pytest

from xds_server.cache import SnapshotCache
from xds_server.config import load, load_shard_text
from xds_server.config.semantics import check_runtime
from xds_server.shards import ShardRegistry
from xds_server.sources.config_dir import ConfigDir
from xds_server.translate import build_ir

GOOD = """
proxy_config:
  public_listeners:
    api: {mode: http, path: 18080}
container_dals:
  kv: {container_listeners: {api: 18081}}
"""


def test_the_rules_run_once_per_load_and_not_again_in_the_translator(monkeypatch):
    calls = []

    def counted(cfg, file):
        calls.append(file)
        return check_runtime(cfg, file)

    monkeypatch.setattr(load, "check_runtime", counted)
    build_ir(load_shard_text(GOOD, "kv.yaml", env={}))
    assert calls == ["kv.yaml"]


def test_an_unchanged_config_is_not_translated_again(monkeypatch):
    registry = ShardRegistry(SnapshotCache())
    assert registry.apply("kv", load_shard_text(GOOD, "kv.yaml", env={}), "kv.yaml")
    import xds_server.shards as shards

    def refuse(*args, **kwargs):
        raise AssertionError("translated an unchanged config")

    monkeypatch.setattr(shards, "build_ir", refuse)
    assert not registry.apply("kv", load_shard_text(GOOD, "kv.yaml", env={}), "kv.yaml")


@pytest.mark.asyncio
async def test_each_file_is_read_once_at_start_up(tmp_path, monkeypatch):
    (tmp_path / "kv.yaml").write_text(GOOD)
    registry = ShardRegistry(SnapshotCache())
    source = ConfigDir(tmp_path, registry)
    reads = []
    import xds_server.sources.config_dir as config_dir

    real = config_dir.read_shard_text
    monkeypatch.setattr(config_dir, "read_shard_text", lambda *a: reads.append(a[0]) or real(*a))
    source.load_all()
    await source.rescan()  # what the watcher does once it is in place
    assert reads == [tmp_path / "kv.yaml"]
    (tmp_path / "kv.yaml").write_text(GOOD + "\n# edited\n")
    await source.rescan()
    assert len(reads) == 2
