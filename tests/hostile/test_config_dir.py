"""Hostile config dirs: relative paths, symlinks, odd names, empty files, a config
that would drop every listener, errors inside the watcher."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from tests.ads.ads_wait import eventually
from xds_server.cache import SnapshotCache
from xds_server.shards import ShardRegistry
from xds_server.sources import config_dir as config_dir_module
from xds_server.sources.config_dir import ConfigDir

from .corpus import GOOD

NO_LISTENERS = "container_dals:\n  kv: {container_listeners: {internal: 18081}}\n"


@pytest.fixture
def registry() -> ShardRegistry:
    return ShardRegistry(SnapshotCache())


async def _watching(source: ConfigDir) -> asyncio.Task[None]:
    ready = asyncio.Event()
    task = asyncio.create_task(source.watch(ready))
    await asyncio.wait_for(ready.wait(), 10)
    return task


async def _stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_relative_config_dir_is_watched_and_reloads(registry, tmp_path, monkeypatch):
    (tmp_path / "shards").mkdir()
    (tmp_path / "shards" / "kv.yaml").write_text(GOOD)
    monkeypatch.chdir(tmp_path)
    source = ConfigDir("shards", registry)
    task = await _watching(source)
    try:
        first = registry.shards["kv"].config_version
        (tmp_path / "shards" / "kv.yaml").write_text(GOOD.replace("18081", "18082"))
        await eventually(lambda: registry.shards["kv"].config_version != first, 10)
    finally:
        await _stop(task)


def test_a_symlink_out_of_the_dir_is_refused_without_reading_it(registry, tmp_path, caplog):
    secret = tmp_path / "shadow"
    secret.write_text("root:$6$VERYSECRETHASH:19000:0:99999:7:::\n")
    shards = tmp_path / "shards"
    shards.mkdir()
    (shards / "kv.yaml").symlink_to(secret)
    with caplog.at_level(logging.INFO):
        ConfigDir(shards, registry).load_all()
    errors = registry.rejections["kv"].errors
    assert "a symlink to a file outside the config dir; refused (not read)" in errors[0]
    assert "VERYSECRET" not in caplog.text + "".join(errors)
    assert "kv" not in registry.shards


def test_a_symlink_inside_the_dir_is_followed(registry, tmp_path):
    (tmp_path / "..data").mkdir()
    (tmp_path / "..data" / "kv.yaml").write_text(GOOD)
    (tmp_path / "kv.yaml").symlink_to(tmp_path / "..data" / "kv.yaml")
    ConfigDir(tmp_path, registry).load_all()
    assert "kv" in registry.shards


def test_files_ignored_for_their_name_are_logged_once_each(registry, tmp_path, caplog):
    names = ["ünïcode.yaml", "my shard.yaml", "-dash.yaml", ".hidden.yaml", "kv.yaml.swp"]
    for name in names:
        (tmp_path / name).write_text(GOOD)
    source = ConfigDir(tmp_path, registry)
    with caplog.at_level(logging.WARNING):
        source.load_all()
        source.load_all()
    ignored = [r.getMessage() for r in caplog.records if "event=file_ignored" in r.getMessage()]
    assert len(ignored) == len(names)
    for name in names:
        assert sum(repr(name) in line for line in ignored) == 1, (name, ignored)
    assert registry.shards == {}


@pytest.mark.parametrize("text", ["", "proxy_config:\n  public_listeners:\n    api: {mode: ht"])
def test_an_empty_or_truncated_file_leaves_the_running_config(registry, tmp_path, text):
    path = tmp_path / "kv.yaml"
    path.write_text(GOOD)
    source = ConfigDir(tmp_path, registry)
    source.load_all()
    running = registry.shards["kv"].config_version
    path.write_text(text)
    source.load(path)
    assert registry.shards["kv"].config_version == running
    assert "kv" in registry.rejections
    path.write_text(GOOD.replace("18081", "18082"))  # the rewrite lands
    source.load(path)
    assert registry.shards["kv"].config_version != running
    assert "kv" not in registry.rejections


def test_losing_every_listener_while_envoys_are_connected_must_be_explicit(registry, tmp_path):
    path = tmp_path / "kv.yaml"
    path.write_text(GOOD)
    source = ConfigDir(tmp_path, registry)
    source.load_all()
    running = registry.shards["kv"].config_version
    watch = registry.cache.connect("kv", "envoy-1", "sotw", lambda: None)
    path.write_text(NO_LISTENERS)
    source.load(path)
    assert registry.shards["kv"].config_version == running
    assert "allow_no_listeners: true" in registry.rejections["kv"].errors[0]
    path.write_text("allow_no_listeners: true\n" + NO_LISTENERS)
    source.load(path)
    assert registry.shards["kv"].config_version != running
    registry.cache.disconnect(watch)


def test_without_connected_envoys_no_listeners_is_allowed(registry, tmp_path):
    path = tmp_path / "kv.yaml"
    path.write_text(GOOD)
    source = ConfigDir(tmp_path, registry)
    source.load_all()
    path.write_text(NO_LISTENERS)
    source.load(path)
    assert "kv" not in registry.rejections


async def test_an_unexpected_error_in_one_file_is_its_rejection_and_the_watch_goes_on(
    registry, tmp_path, monkeypatch
):
    (tmp_path / "kv.yaml").write_text(GOOD)
    real = config_dir_module.read_shard_text

    def flaky(path: Path, *args: object) -> object:
        if path.name == "bad.yaml":
            raise RecursionError("boom")
        return real(path, *args)

    monkeypatch.setattr(config_dir_module, "read_shard_text", flaky)
    source = ConfigDir(tmp_path, registry)
    task = await _watching(source)
    try:
        (tmp_path / "bad.yaml").write_text(GOOD)
        await eventually(lambda: "bad" in registry.rejections, 10)
        assert "could not be loaded (RecursionError)" in registry.rejections["bad"].errors[0]
        first = registry.shards["kv"].config_version
        (tmp_path / "kv.yaml").write_text(GOOD.replace("18081", "18083"))
        await eventually(lambda: registry.shards["kv"].config_version != first, 10)
        assert not task.done() and source.failure is None
    finally:
        await _stop(task)


async def test_a_failing_watch_is_reported_and_retried(registry, tmp_path, monkeypatch):
    attempts = []

    def broken(*args: object, **kwargs: object) -> object:
        attempts.append(1)
        raise OSError(28, "inotify watch limit reached")

    monkeypatch.setattr(config_dir_module.watchfiles, "awatch", broken)
    source = ConfigDir(tmp_path, registry)
    task = asyncio.create_task(source.watch())
    try:
        await eventually(lambda: source.failure is not None, 5)
        assert "inotify watch limit reached" in (source.failure or "")
        await eventually(lambda: len(attempts) >= 2, 5)  # retried with a backoff
        assert not task.done()
    finally:
        await _stop(task)


def test_an_apply_that_raises_is_a_rejection(registry, tmp_path, monkeypatch):
    (tmp_path / "kv.yaml").write_text(GOOD)

    def broken(*args: object, **kwargs: object) -> bool:
        raise KeyError("surprise")

    monkeypatch.setattr(registry, "apply", broken)
    ConfigDir(tmp_path, registry).load_all()
    assert "could not be applied (KeyError)" in registry.rejections["kv"].errors[0]
