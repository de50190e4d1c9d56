"""The rollout engine end to end in one process (fake clock, simulated hosts): waves
in tier order, a failing wave rolled back by itself and the rollout halted before the
more critical tiers, judgements from DAL health and from Envoy's error rates, pause,
resume and abort, a restart in the middle, and version sets re-resolved in waves."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from xds_server.deploy.artifacts import Build
from xds_server.deploy.index import ArtifactIndex
from xds_server.deploy.rollout.engine import RolloutEngine, RolloutRefused
from xds_server.deploy.rollout.model import Options

from .rollout_world import World, open_world, shard_text

SHARDS = {f"s{tier}": tier for tier in range(4)}  # s0 is tier 0 ... s3 tier 3


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    w = await open_world(tmp_path / "data")
    for shard, tier in SHARDS.items():
        await w.put(shard, shard_text(tier))
    try:
        yield w
    finally:
        await w.store.close()


def applied_order(entries) -> list[str]:
    return [e.shard for e in entries if e.action == "rollout.apply"]


async def test_waves_go_in_tier_order_and_each_is_judged(world: World):
    r = await world.start(files={s: shard_text(t, env="b") for s, t in SHARDS.items()})
    assert [(w.tier, w.location) for w in r.waves] == [(3, "prod/us-west-2"), (2, "prod/eu-west-1"),
                                                        (1, "prod/us-east-1"), (0, "prod/us-east-1")]
    done = await world.run(r)
    assert done.state == "succeeded", done.outcome
    assert applied_order(await world.audit()) == ["s3", "s2", "s1", "s0"]
    for w in done.waves:
        assert w.state == "passed" and w.started_at <= w.applied_at <= w.synced_at < w.finished_at
        assert w.finished_at - w.synced_at >= 5  # the bake
        assert "1 nodes took it" in w.verdict
    # Each wave began only after the one before had passed.
    for before, after in zip(done.waves, done.waves[1:], strict=False):
        assert before.finished_at <= after.started_at
    for shard in SHARDS:
        assert (await world.store.get(shard)).meta.author == f"rollout:{done.id}"


async def test_a_wave_whose_new_dal_fails_its_health_check_rolls_back_and_halts(world: World):
    files = {s: shard_text(t, env="b", broken=(s == "s2")) for s, t in SHARDS.items()}
    r = await world.start(files=files)
    done = await world.run(r)
    assert done.state == "failed"
    assert [w.state for w in done.waves] == ["passed", "rolled_back", "pending", "pending"]
    assert "wave 2 (tier 2, prod/eu-west-1) failed: shard s2 node s2-n1 (prod/us-east-1): DAL broken UNHEALTHY: " \
           "health check failing [owners: pager team-2]" in done.outcome
    assert "rolled back: s2 to version 1" in done.outcome
    entries = await world.audit()
    assert applied_order(entries) == ["s3", "s2"]  # never reached tiers 1 and 0
    rollback = [e for e in entries if e.action == "rollout.rollback"]
    assert [(e.shard, e.base_version, e.new_version) for e in rollback] == [("s2", 2, 3)]
    assert (await world.store.get("s2")).text == shard_text(2)
    assert (await world.store.get("s2")).meta.source == "rollback"
    assert (await world.store.get("s1")).meta.number == 1 and (await world.store.get("s0")).meta.number == 1
    assert world.registry.shards["s2"].config.container_dals.keys() == {"kv"}


async def test_a_wave_with_a_worse_error_rate_than_before_fails(world: World):
    world.failing_env = {"s3": "b"}  # s3 answers half its requests with 5xx on the new config
    r = await world.start(Options(bake_s=6, baseline_s=10), files={"s3": shard_text(3, env="b"),
                                                                     "s0": shard_text(0, env="b")})
    done = await world.run(r, traffic=100)
    assert done.state == "failed", done.outcome
    assert "shard s3: listener api: 5xx" in done.outcome and "0.0% of" in done.outcome
    assert "[owners: pager team-3]" in done.outcome
    assert applied_order(await world.audit()) == ["s3"]


async def test_pause_holds_the_next_wave_and_resume_goes_on(world: World):
    r = await world.start(files={"s3": shard_text(3, env="b"), "s2": shard_text(2, env="b")})
    await world.engine.change(r.id, "pause", "tester")
    for _ in range(20):
        world.report()
        await world.engine.tick()
        world.now += 1
    paused = await world.engine.get(r.id)
    assert [w.state for w in paused.waves] == ["pending", "pending"] and paused.state == "running"
    await world.engine.change(r.id, "resume", "tester")
    assert (await world.run(r)).state == "succeeded"


async def test_abort_rolls_the_wave_in_flight_back(world: World):
    r = await world.start(Options(bake_s=30), files={"s3": shard_text(3, env="b"), "s2": shard_text(2, env="b")})
    for _ in range(5):
        world.report()
        await world.engine.tick()
        world.now += 1
    assert (await world.engine.get(r.id)).waves[0].state == "baking"
    await world.engine.change(r.id, "abort", "someone")
    done = await world.run(r)
    assert done.state == "aborted" and "aborted by someone" in done.outcome
    assert (await world.store.get("s3")).text == shard_text(3)
    with pytest.raises(RolloutRefused, match="has ended"):
        await world.engine.change(r.id, "resume", "tester")


async def test_a_restarted_engine_goes_on_where_the_last_one_stopped(world: World):
    r = await world.start(files={s: shard_text(t, env="c") for s, t in SHARDS.items()})
    for _ in range(8):
        world.report()
        await world.engine.tick()
        world.now += 1
    halfway = await world.engine.get(r.id)
    assert halfway.waves[0].state == "passed" and halfway.waves[-1].state == "pending"
    world.engine = RolloutEngine(world.store, world.changes, clock=world.clock)
    await world.engine.start()
    try:
        assert (await world.run(r)).state == "succeeded"
    finally:
        await world.engine.stop()
    assert applied_order(await world.audit()) == ["s3", "s2", "s1", "s0"]


async def test_a_shard_can_be_in_one_running_rollout_only(world: World):
    await world.start(files={"s3": shard_text(3, env="b")})
    with pytest.raises(RolloutRefused) as e:
        await world.start(files={"s3": shard_text(3, env="c"), "s2": shard_text(2, env="c")})
    assert e.value.status == 409 and e.value.details == {"s3": "already in rollout r1"}


async def test_invalid_files_and_unchanged_ones_are_refused_at_start(world: World):
    with pytest.raises(RolloutRefused) as e:
        await world.start(files={"s3": "proxy_config: {public_listeners: {api: {mode: nope, path: 1}}}"})
    assert "s3" in e.value.details and "nope" in e.value.details["s3"]
    with pytest.raises(RolloutRefused, match="nothing to roll out"):
        await world.start(files={"s3": shard_text(3)})


async def test_version_sets_resolved_again_in_waves(world: World):
    index = ArtifactIndex(world.store)
    d1, d2 = "sha256:" + "1" * 64, "sha256:" + "2" * 64
    await index.push("dals/dgw-kv", Build(d1, "image", "dgw-kv:test", "t", "tester", ("branch/main",)))
    pinned = "  version_set:\n    artifacts:\n      dals/dgw-kv: {kind: branch, value: main}\n"
    for shard, tier in SHARDS.items():
        await world.put(shard, shard_text(tier, version_set=pinned))
    await index.push("dals/dgw-kv", Build(d2, "image", "dgw-kv:test", "t", "tester", ("branch/main",)))
    assert {s.pins["dals/dgw-kv"].digest for s in world.registry.shards.values()} == {d1}  # pinned
    r = await world.start(shards=None)
    assert r.kind == "resolve" and len(r.targets) == 4
    assert (await world.run(r)).state == "succeeded"
    assert {s.pins["dals/dgw-kv"].digest for s in world.registry.shards.values()} == {d2}
    with pytest.raises(RolloutRefused, match="nothing to roll out"):
        await world.start(shards=None)
