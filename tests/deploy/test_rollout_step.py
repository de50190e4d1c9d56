"""The rollout's pure parts: the order of waves, and each rule of ``step`` as a table
of state + observations + time → action."""

from __future__ import annotations

from dataclasses import replace

from xds_server.deploy.rollout.model import Figure, Options, Rollout, Target, Wave
from xds_server.deploy.rollout.observe import NodeView, ShardView
from xds_server.deploy.rollout.step import Begin, Fail, Finish, Pass, Taken, Wait, step
from xds_server.deploy.rollout.waves import Place, plan_waves


def test_less_critical_tiers_go_first_then_the_smaller_locations():
    places = {"a": Place(0, "prod/us-east-1"), "b": Place(3, "prod/us-east-1"), "c": Place(5, "test/x"),
              "d": Place(3, "prod/eu-west-1"), "e": Place(3, "prod/eu-west-1"), "f": Place(2, "unplaced")}
    waves = plan_waves(places)
    assert [(w.tier, w.location, w.shards) for w in waves] == [
        (5, "test/x", ("c",)), (3, "prod/us-east-1", ("b",)), (3, "prod/eu-west-1", ("d", "e")),
        (2, "unplaced", ("f",)), (0, "prod/us-east-1", ("a",))]
    assert [w.shards for w in plan_waves(places, wave_size=1)][2:4] == [("d",), ("e",)]


def rollout(state: str = "pending", **wave: object) -> Rollout:
    w = replace(Wave(0, 3, "prod/us-west-2", ("s",)), state=state, **wave)  # type: ignore[arg-type]
    target = Target("s", 3, "prod/us-west-2", ("pager p",), 1, True, config_version="v2")
    return Rollout("r1", 0.0, "me", "", "files", Options(bake_s=10, sync_timeout_s=30), (w,), {"s": target})


def view(*nodes: NodeView, served: str = "v2", traffic: tuple[Figure, ...] = ()) -> dict[str, ShardView]:
    return {"s": ShardView("s", served, nodes, traffic)}


def node(xds: str | None = "SYNCED", config: str | None = "v2", health: str = "HEALTHY", **kw) -> NodeView:
    return NodeView("n1", "prod/us-west-2", xds, config, {"kv": (health, "why")}, **kw)


def test_a_pending_wave_begins_with_its_baseline_unless_paused_or_aborted():
    base = (Figure("listener api", 100, 1),)
    assert step(rollout(), view(traffic=base), 0) == Begin(0, {"s": base})
    assert isinstance(step(replace(rollout(), paused=True), view(), 0), Wait)
    assert step(replace(rollout(), abort_requested="x"), view(), 0) == Finish(
        "aborted", "aborted by x before wave 1 (tier 3, prod/us-west-2)")


def test_an_applied_wave_waits_for_every_node_then_bakes():
    r = rollout("applying", applied_at=100.0)
    assert isinstance(step(r, view(node(xds="STALE: CDS")), 101), Wait)
    assert isinstance(step(r, view(node(config="v1")), 101), Wait)
    assert isinstance(step(r, view(node(health="STARTING")), 101), Wait)
    assert step(r, view(node(), node(xds=None)), 101) == Taken(0)
    late = step(r, view(node(health="STARTING")), 130)
    assert isinstance(late, Fail) and "not taken within 30 s: shard s node n1 (prod/us-west-2): DAL kv STARTING" in late.verdict


def test_a_nack_an_unhealthy_dal_or_a_refused_build_fails_at_once():
    r = rollout("applying", applied_at=100.0)
    for bad, says in ((node(xds="NACKED CDS: bad cluster"), "Envoy NACKED CDS: bad cluster"),
                      (node(health="UNHEALTHY"), "DAL kv UNHEALTHY: why"),
                      (node(refused={"kv": "image x has digest y"}), "DAL kv's build refused: image x")):
        action = step(r, view(bad), 101)
        assert isinstance(action, Fail) and says in action.verdict and "[owners: pager p]" in action.verdict
    # An unhealthy DAL of the old config is not the wave's doing.
    assert isinstance(step(r, view(node(config="v1", health="UNHEALTHY")), 101), Wait)
    changed = step(r, view(node(), served="v9"), 101)
    assert isinstance(changed, Fail) and "was changed during the wave" in changed.verdict


def test_after_the_bake_the_error_rate_is_judged_against_the_baseline():
    base = {"s": (Figure("listener api", 1000, 0),)}
    r = rollout("baking", applied_at=100.0, synced_at=101.0, baseline=base)
    assert isinstance(step(r, view(node()), 105), Wait)
    ok = step(r, view(node(), traffic=(Figure("listener api", 200, 1),)), 111)
    assert isinstance(ok, Pass) and "worst 5xx 0.5% (listener api of s)" in ok.verdict
    bad = step(r, view(node(), traffic=(Figure("listener api", 200, 10),)), 111)
    assert isinstance(bad, Fail) and "5xx 5.0% of 200 requests in the bake, 0.0% of 1000 before" in bad.verdict
    few = step(r, view(node(), traffic=(Figure("listener api", 5, 5),)), 111)
    assert isinstance(few, Pass) and "too few requests" in few.verdict


def test_every_wave_passed_finishes_and_a_finished_rollout_waits():
    done = rollout("passed")
    assert isinstance(step(done, {}, 0), Finish)
    assert isinstance(step(replace(done, state="succeeded"), {}, 0), Wait)
