"""The migration's plan, pure: each step's phase and wiring, and every refusal as one
line that says what must happen first (nothing else is touched)."""

from __future__ import annotations

import pytest
import yaml

from xds_server.config.model import ShardFile
from xds_server.migrate import plan
from xds_server.migrate.model import Migration
from xds_server.migrate.plan import Refused
from xds_server.node_stats import TrafficSummary

READS = ["/dgw.kv.v1.KeyValue/GetItems", "/dgw.kv.v1.KeyValue/ScanItems"]
TEMPLATE = """\
proxy_config:
  public_listeners:
    grpc: {mode: grpc, path: 18080}  # kept
container_dals:
  thrift: {container_listeners: {grpc: 18081}, read_methods: READS}
  cql: {container_listeners: {grpc: 18082}, api: dgw.kv.v1.KeyValue, read_methods: READS}
  echo: {container_listeners: {grpc: 18083}, image: "reg.example/echo-dal:3", read_methods: READS}
  mystery: {container_listeners: {grpc: 18084}}
  plain: {container_listeners: {grpc: 18085}, api: dgw.kv.v1.KeyValue}
"""
TEXT = TEMPLATE.replace("READS", str(READS))


def config(text: str = TEXT) -> ShardFile:
    return ShardFile.model_validate(yaml.safe_load(text))


def started(text: str = TEXT) -> Migration:
    return plan.start(None, config(text), "kv", "thrift", "cql", by="ops", now=1.0, version=3)


def wiring_after(m: Migration, text: str = TEXT) -> dict:
    return yaml.safe_load(plan.apply_ops(text, plan.wiring_ops(config(text), m))).get("wiring", {})


def through(m: Migration, *phases: str) -> Migration:
    for phase in phases:
        m = {
            "backfilling": lambda m: plan.backfill(
                m, "kv", {"cursors": {"gw": "a"}}, by="r", now=2
            ),
            "backfilled": lambda m: plan.backfill(
                m, "kv", {"done": True, "totals": {"items": 5}}, by="r", now=3
            ),
            "verified": lambda m: plan.verify(
                m, "kv", {"differences": 0, "items": 5}, by="r", now=4
            ),
            "promoted": lambda m: plan.promote(m, "kv", None, None, by="ops", now=5),
            "finished": lambda m: plan.finish(m, "kv", by="ops", now=6),
        }[phase](m)
        assert m.phase == phase
    return m


def test_apis_from_the_key_the_read_methods_or_the_image() -> None:
    c = config()
    assert plan.dal_api(c, "cql") == "dgw.kv.v1.KeyValue"
    assert plan.dal_api(c, "thrift") == "dgw.kv.v1.KeyValue"
    assert plan.dal_api(c, "echo") == "dgw.kv.v1.KeyValue"  # its read_methods say so
    assert plan.dal_api(config(TEMPLATE.replace(", read_methods: READS}", "}").replace("READS", str(READS))), "echo") == "echo-dal"
    assert plan.dal_api(c, "mystery") is None


def test_each_phase_wires_writes_then_moves_reads_then_retires_the_old_dal() -> None:
    m = started()
    assert (m.phase, m.api, m.before_version) == ("shadowing", "dgw.kv.v1.KeyValue", 3)
    shadow = {"mode": "shadow", "target": "cql", "traffic": "writes"}
    assert wiring_after(m) == {"thrift": shadow}
    m = through(m, "backfilling", "backfilled", "verified")
    assert wiring_after(m) == {"thrift": shadow}
    p = plan.promote(m, "kv", [1, 10, 100], 2, by="ops", now=5)
    assert (p.phase, p.promotion.percent) == ("promoting", 1)
    assert wiring_after(p) == {"thrift": {**shadow, "read_percent": 1}}
    p = plan.step_passed(p, "step 1 passed", now=6)
    p = plan.step_passed(p, "step 2 passed", now=7)
    assert p.promotion.percent == 100
    assert wiring_after(p) == {"cql": {"mode": "shadow", "target": "thrift", "traffic": "writes"}}
    p = plan.step_passed(p, "step 3 passed", now=8)
    assert p.phase == "promoted" and len(p.promotion.verdicts) == 3
    done = plan.finish(p, "kv", by="ops", now=9)
    promoted_text = plan.apply_ops(TEXT, plan.wiring_ops(config(), p))
    finished_text = plan.apply_ops(promoted_text, plan.wiring_ops(config(promoted_text), done))
    data = yaml.safe_load(finished_text)
    assert "thrift" not in data["container_dals"] and "wiring" not in data
    assert "# kept" in finished_text  # the operator's text stays as written
    assert plan.wiring_ops(config(finished_text), done) == []  # acting again changes nothing


def test_the_operators_own_shadow_to_the_target_is_taken_over_and_back_after_a_rollback() -> None:
    text = TEXT + "wiring:\n  thrift: {mode: shadow, target: cql, percent: 50}\n"
    m = started(text)
    assert wiring_after(m, text) == {
        "thrift": {"mode": "shadow", "target": "cql", "traffic": "writes"}
    }
    after_start = plan.apply_ops(text, plan.wiring_ops(config(text), m))
    gone = plan.rollback(m, "kv", by="ops", now=2)
    assert wiring_after(gone, after_start) == {
        "thrift": {"mode": "shadow", "target": "cql", "percent": 50}
    }


def test_rollback_goes_back_one_phase_and_after_promotion_the_old_dal_serves_again() -> None:
    m = through(started(), "backfilling", "backfilled", "verified", "promoted")
    back = plan.rollback(m, "kv", by="ops", now=7)
    assert back.phase == "verified"
    assert wiring_after(back) == {
        "thrift": {"mode": "shadow", "target": "cql", "traffic": "writes"}
    }
    assert plan.rollback(back, "kv", by="ops", now=8).phase == "backfilled"
    assert plan.rollback(back, "kv", by="ops", now=8).verify == {}
    gone = plan.rollback(started(), "kv", by="ops", now=2)
    assert gone.phase == "rolled_back" and wiring_after(gone) == {}
    abandoned = plan.rollback(back, "kv", by="ops", now=9, abandon=True)
    assert abandoned.phase == "rolled_back"


REFUSALS = [
    (
        lambda: plan.start(None, config(), "kv", "thrift", "nope", by="o", now=1, version=1),
        404,
        "--to DAL 'nope' is not a DAL of shard kv; its DALs: cql, echo, mystery, plain, thrift",
    ),
    (
        lambda: plan.start(None, config(TEMPLATE.replace("image:", "api: echo.v1, image:").replace(
            "READS", str(READS))), "kv", "thrift", "echo", by="o", now=1, version=1),
        400,
        "DALs 'thrift' (dgw.kv.v1.KeyValue) and 'echo' (echo.v1) serve different APIs",
    ),
    (
        lambda: plan.start(None, config(), "kv", "thrift", "plain", by="o", now=1, version=1),
        400,
        "DAL 'plain' serves gRPC listener grpc but declares no read_methods: declare them",
    ),
    (
        lambda: plan.start(None, config(), "kv", "thrift", "mystery", by="o", now=1, version=1),
        400,
        "DAL 'mystery' does not say which API it serves: add `api: NAME`",
    ),
    (
        lambda: plan.start(started(), config(), "kv", "thrift", "cql", by="o", now=1, version=1),
        409,
        "shard kv is already migrating thrift → cql (shadowing); finish or roll it back first",
    ),
    (
        lambda: plan.start(
            None,
            config(TEXT + "wiring:\n  thrift: {mode: shadow, target: echo}\n"),
            "kv",
            "thrift",
            "cql",
            by="o",
            now=1,
            version=1,
        ),
        409,
        "DAL 'thrift' is already wired (shadow to echo)",
    ),
    (
        lambda: plan.promote(started(), "kv", None, None, by="o", now=2),
        409,
        "cannot promote: the migration of shard kv is shadowing; next: copy the data: dgw migrate kv backfill",
    ),
    (
        lambda: plan.finish(
            through(started(), "backfilling", "backfilled", "verified"), "kv", by="o", now=2
        ),
        409,
        "cannot finish: the migration of shard kv is verified; next: dgw migrate kv promote",
    ),
    (lambda: plan.verify(started(), "kv", {"differences": 0}, by="o", now=2), 409, "cannot verify"),
    (
        lambda: plan.backfill(
            through(started(), "backfilling", "backfilled"), "kv", {}, by="o", now=2
        ),
        409,
        "cannot backfill: the migration of shard kv is backfilled; next: compare both sides",
    ),
    (lambda: plan.finish(None, "kv", by="o", now=2), 404, "shard kv has no migration; start one"),
    (
        lambda: plan.rollback(
            through(started(), "backfilling", "backfilled", "verified", "promoted", "finished"),
            "kv",
            by="o",
            now=9,
        ),
        409,
        "is finished; start a new one",
    ),
    (lambda: plan.check_steps([10, 1, 100], 1), 400, "steps must rise: 10,1,100"),
    (lambda: plan.check_steps([1, 50], 1), 400, "the last step must be 100"),
    (lambda: plan.check_steps([1, 100], 0), 400, "interval must be from"),
    (lambda: plan.check_steps([1, 100], "5s"), 400, "interval must be from 0.5s to 86400s"),  # was a 500
]


@pytest.mark.parametrize(("step", "status", "words"), REFUSALS)
def test_refusals_are_one_line_saying_what_first(step, status, words) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(Refused) as e:
        step()
    assert e.value.status == status and words in str(e.value) and "\n" not in str(e.value)


def test_a_verify_with_differences_stays_backfilled_and_says_fix() -> None:
    m = through(started(), "backfilling", "backfilled")
    m = plan.verify(m, "kv", {"differences": [{"key": "a"}, {"key": "b"}]}, by="r", now=5)
    assert (
        m.phase == "backfilled"
        and "2 differences found: dgw migrate kv verify --fix" in plan.next_step(m)
    )
    m = plan.verify(
        m, "kv", {"differences": [{"key": "a"}, {"key": "b"}], "fixed": 2}, by="r", now=6
    )
    assert m.phase == "verified"


def summary(requests: int, errors: int, p99: float | None) -> TrafficSummary:
    return TrafficSummary(
        requests, 0.0, errors, errors / requests if requests else 0.0, None, p99, {}
    )


def test_a_step_is_judged_by_error_rate_and_p99_against_the_old_dal() -> None:
    p = plan.promote(through(started(), "backfilling", "backfilled", "verified"), "kv", [1, 100], 2,
                     by="o", now=1).promotion  # fmt: skip
    assert p is not None
    assert plan.judge(p, summary(100, 0, 2.0), summary(0, 0, None), "thrift", "cql") is None
    ok = plan.judge(p, summary(100, 0, 2.0), summary(10, 0, 3.0), "thrift", "cql")
    assert ok is not None and ok.passed
    bad = plan.judge(p, summary(100, 0, 2.0), summary(40, 40, 1.0), "thrift", "cql")
    assert bad is not None and not bad.passed
    assert bad.line.startswith(
        "step 1 (1%) failed: cql's error rate 100.0% (40 of 40) is over the allowed 1.0%"
    )
    assert "by 99.0%" in bad.line
    few = plan.judge(p, summary(100, 0, 2.0), summary(40, 0, 30.0), "thrift", "cql")
    assert few is not None and few.passed and "not judged (fewer than 100 requests)" in few.line
    slow = plan.judge(p, summary(100, 0, 2.0), summary(400, 0, 30.0), "thrift", "cql")
    assert (
        slow is not None
        and "cql's p99 30.0 ms is over the allowed 8.0 ms" in slow.line
        and "by 22.0 ms" in slow.line
    )


def promoting() -> Migration:
    m = through(started(), "backfilling", "backfilled", "verified")
    return plan.promote(m, "kv", [1, 100], 2, by="o", now=1)


def test_a_failed_step_rolls_back_to_verified_and_says_why() -> None:
    m = promoting()
    m = plan.step_failed(m, "step 1 (1%) failed: x", now=3)
    assert (
        m.phase == "verified"
        and m.promotion is None
        and m.halted.startswith("step 1 (1%) failed: x")
    )
    assert wiring_after(m) == {"thrift": {"mode": "shadow", "target": "cql", "traffic": "writes"}}


def test_the_record_round_trips() -> None:
    m = promoting()
    assert Migration.from_json(m.to_json(), 0) == m


def test_the_runner_is_told_before_it_runs_out_of_order() -> None:
    m = started()
    assert plan.runner_refusal(m, "backfill") is None
    assert plan.runner_refusal(m, "verify") == (
        "cannot verify: the migration of shard kv is shadowing; next: copy the data: dgw migrate kv backfill")
    m = through(m, "backfilling", "backfilled")
    assert plan.runner_refusal(m, "verify") is None
    assert (plan.runner_refusal(m, "backfill") or "").startswith("cannot backfill: the migration of shard kv is backfilled")
    m = through(m, "verified", "promoted")
    assert (plan.runner_refusal(m, "verify") or "").startswith("cannot verify: the migration of shard kv is promoted")
    assert plan.runner_refusal(through(m, "finished"), "backfill") == (
        "the migration of shard kv (thrift → cql) is finished; start a new one: dgw migrate kv start --from A --to B")


def test_health_and_reflection_are_not_a_dals_api() -> None:
    text = TEMPLATE.replace("READS", str([*READS, "/grpc.health.v1.Health/*", "/grpc.reflection.v1.ServerReflection/X"]))
    assert plan.dal_api(config(text), "thrift") == "dgw.kv.v1.KeyValue"


@pytest.mark.parametrize(("steps", "words"), [([0, 100], "not 0"), ([200.0], "not 200"), (["x", 100], "not 'x'"),
                                              ([float("nan"), 100], "not nan")])  # fmt: skip
def test_a_step_out_of_range_is_named_as_given(steps: list, words: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(Refused) as e:
        plan.check_steps(steps, 5)
    assert str(e.value).endswith(words)


def test_a_new_copy_drops_the_report_of_the_old_one() -> None:
    # verify found differences; rolled back, the data is copied again: the old report's
    # "N differences found: verify --fix" must not be offered for the new copy.
    m = through(started(), "backfilling", "backfilled")
    m = plan.verify(m, "kv", {"differences": [{"key": "a"}]}, by="r", now=5)
    again = plan.rollback(m, "kv", by="ops", now=6)
    assert again.phase == "shadowing" and again.verify == {} and again.backfill == {}
    copied = through(plan.backfill(again, "kv", {"cursors": {}}, by="r", now=7), "backfilled")
    assert copied.verify == {} and plan.next_step(copied) == "next: compare both sides: dgw migrate kv verify"
