"""The convergence plan: a pure function of desired specs, observed instances,
restart history and the time."""

import itertools

import pytest

from dgw_api.health import Health
from sidecar.plan import (
    Create,
    Failures,
    Keep,
    Observed,
    Recreate,
    Remove,
    Restart,
    RestartPolicy,
    Start,
    State,
    Wait,
    forget_recovered,
    plan,
    record_attempt,
    with_unhealthy_since,
)
from sidecar.spec import build_spec
from xds_server.config.model import RuntimeConfig

NOW = 1000.0
POLICY = RestartPolicy(backoff_base_s=0.5, backoff_max_s=8, backoff_reset_s=10, unhealthy_grace_s=5)


def cfg(**envs):
    return RuntimeConfig.model_validate(
        {"container_dals": {
            name: {"image": "dgw-sample-dal:test", "container_listeners": {"http": 80}, "env": env}
            for name, env in envs.items()
        }}
    )


def specs(c, ports=None):
    return {
        name: build_spec(c, name, shard="s", node="n", host_ports={"http": (ports or {}).get(name, 20000 + i)},
                         network_mode="host", bind_address="127.0.0.1")
        for i, name in enumerate(sorted(c.container_dals))
    }


def obs(spec, state=State.RUNNING, health=Health.HEALTHY, ref=None, **kw):
    return Observed(dal=spec.name, ref=ref or f"c-{spec.name}", spec_hash=spec.spec_hash, state=state,
                    health=health, ports=spec.host_ports, started_at=kw.pop("started_at", NOW - 100), **kw)


def kinds(p):
    return {(a.dal, type(a)) for a in p.actions}


def kind(p, dal):
    (a,) = p.of(dal)
    return type(a)


D = specs(cfg(a={}, b={}))


def test_nothing_observed_creates_everything():
    p = plan(D, [], {}, NOW, POLICY)
    assert kinds(p) == {("a", Create), ("b", Create)}
    assert p.wake_at is None


def test_unchanged_dals_are_left_alone():
    p = plan(D, [obs(D["a"]), obs(D["b"], health=Health.STARTING)], {}, NOW, POLICY)
    assert kinds(p) == {("a", Keep), ("b", Keep)}
    assert p.changes() == []


def test_changed_env_recreates_only_that_dal():
    new = specs(cfg(a={"X": "1"}, b={}))
    p = plan(new, [obs(D["a"]), obs(D["b"])], {}, NOW, POLICY)
    assert kinds(p) == {("a", Recreate), ("b", Keep)}
    assert p.of("a")[0].spec is new["a"] and p.of("a")[0].observed.spec_hash == D["a"].spec_hash


def test_removed_dal_is_removed():
    only_a = specs(cfg(a={}))
    p = plan(only_a, [obs(D["a"]), obs(D["b"])], {}, NOW, POLICY)
    assert kinds(p) == {("a", Keep), ("b", Remove)}


def test_a_blocked_dal_keeps_its_instance():
    only_a = specs(cfg(a={}))
    p = plan(only_a, [obs(D["a"]), obs(D["b"])], {}, NOW, POLICY, keep={"b"})
    assert kinds(p) == {("a", Keep)}


def test_dead_dal_is_restarted_at_once_the_first_time():
    p = plan(D, [obs(D["a"], State.EXITED, Health.NONE, exit_code=137), obs(D["b"])], {}, NOW, POLICY)
    (a,) = p.of("a")
    assert isinstance(a, Restart) and "exited with code 137 (SIGKILL)" in a.reason


def test_restarts_back_off_exponentially():
    dead = [obs(D["a"], State.EXITED, exit_code=1), obs(D["b"])]
    history = {}
    t = NOW
    allowed_at = []
    for _ in range(6):
        # Find the first moment the plan allows a restart, stepping 0.1 s.
        while kind(plan(D, dead, history, t, POLICY), "a") is not Restart:
            p = plan(D, dead, history, t, POLICY)
            (wait,) = p.of("a")
            assert isinstance(wait, Wait) and p.wake_at == wait.not_before
            t = round(t + 0.1, 3)
        allowed_at.append(t)
        history = record_attempt(history, "a", D["a"].spec_hash, t)
    gaps = [round(b - a, 1) for a, b in itertools.pairwise(allowed_at)]
    assert gaps == [0.5, 1.0, 2.0, 4.0, 8.0]  # capped at backoff_max_s


def test_new_spec_starts_without_backoff():
    history = {"a": Failures(D["a"].spec_hash, 5, NOW)}
    new = specs(cfg(a={"X": "2"}, b={}))
    p = plan(new, [obs(D["a"], State.EXITED), obs(D["b"])], history, NOW, POLICY)
    assert kind(p, "a") is Recreate


def test_failed_creates_back_off_too():
    history = record_attempt({}, "a", D["a"].spec_hash, NOW)  # e.g. image missing
    p = plan(D, [obs(D["b"])], history, NOW + 0.1, POLICY)
    assert kind(p, "a") is Wait
    assert kind(plan(D, [obs(D["b"])], history, NOW + 0.5, POLICY), "a") is Create


def test_unhealthy_is_restarted_only_after_its_grace():
    sick = [obs(D["a"], health=Health.UNHEALTHY, unhealthy_since=NOW - 1), obs(D["b"])]
    p = plan(D, sick, {}, NOW, POLICY)
    assert kind(p, "a") is Keep and p.wake_at == NOW + 4
    later = plan(D, sick, {}, NOW + 4, POLICY)
    assert kind(later, "a") is Restart and "unhealthy" in later.of("a")[0].reason


def test_created_but_never_started_is_started_and_a_failed_start_restarted():
    p = plan(D, [obs(D["a"], State.CREATED, Health.NONE), obs(D["b"])], {}, NOW, POLICY)
    assert kind(p, "a") is Start
    failed = obs(D["a"], State.CREATED, Health.NONE, error='exec: "nope": not found')
    p = plan(D, [failed, obs(D["b"])], {}, NOW, POLICY)
    assert kind(p, "a") is Restart and "nope" in p.of("a")[0].reason


def test_duplicates_are_removed_keeping_the_right_running_one():
    old = obs(D["a"], ref="old", started_at=NOW - 5)
    old = Observed(**{**old.__dict__, "spec_hash": "stale"})
    good = obs(D["a"], ref="good", started_at=NOW - 50)
    p = plan(D, [old, good, obs(D["b"])], {}, NOW, POLICY)
    removes = [a.observed.ref for a in p.of("a") if isinstance(a, Remove)]
    assert removes == ["old"]
    assert [type(a) for a in p.of("a") if not isinstance(a, Remove)] == [Keep]


def test_plan_is_pure():
    args = (D, [obs(D["a"], State.EXITED)], {}, NOW, POLICY)
    assert plan(*args) == plan(*args)


def test_forget_recovered_forgets_failures_of_dals_that_ran_well():
    h = {"a": Failures(D["a"].spec_hash, 3, NOW - 30), "b": Failures(D["b"].spec_hash, 2, NOW)}
    out = forget_recovered(h, [obs(D["a"], started_at=NOW - 11), obs(D["b"], started_at=NOW - 2)], NOW, POLICY)
    assert set(out) == {"b"}
    sick = forget_recovered(h, [obs(D["a"], health=Health.UNHEALTHY, started_at=NOW - 60)], NOW, POLICY)
    assert "a" in sick


def test_record_attempt_counts_per_spec():
    h = record_attempt({}, "a", "h1", 1.0)
    h = record_attempt(h, "a", "h1", 2.0)
    assert h["a"] == Failures("h1", 2, 2.0)
    assert record_attempt(h, "a", "h2", 3.0)["a"] == Failures("h2", 1, 3.0)


def test_unhealthy_since_is_remembered_per_instance():
    sick = obs(D["a"], health=Health.UNHEALTHY)
    first, mem = with_unhealthy_since([sick], {}, NOW)
    again, mem = with_unhealthy_since([sick], mem, NOW + 3)
    assert first[0].unhealthy_since == NOW and again[0].unhealthy_since == NOW
    healed, mem = with_unhealthy_since([obs(D["a"])], mem, NOW + 4)
    assert mem == {} and healed[0].unhealthy_since is None


@pytest.mark.parametrize("attempts, delay", [(0, 0), (1, 0.5), (2, 1), (3, 2), (10, 8)])
def test_policy_delay(attempts, delay):
    assert POLICY.delay(attempts) == delay
