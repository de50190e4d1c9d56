"""The report is a pure function of the goal, the observed instances and Envoy's
state: each row here is one situation and the report it must give."""

from __future__ import annotations

import pytest

from dgw_api.health import Health
from dgw_api.v1 import gateway_pb2
from sidecar.desired import Desired
from sidecar.plan import Observed, State
from sidecar.report import (
    EnvoyView,
    Host,
    Situation,
    build_report,
    got_worse,
    serving_clients,
)
from sidecar.spec import build_spec
from xds_server.config.model import RuntimeConfig

HOST = Host(shard="kv", node_id="n1", bind_address="127.0.0.1", host_address="10.0.0.1",
            runtime="fake", network_mode="host")


def config(wiring: dict | None = None) -> RuntimeConfig:
    """The demo's shape: two DALs on the same two listeners."""
    dal = {"image": "dgw-sample-dal:test", "container_listeners": {"api": 8081, "rpc": 8981}}
    return RuntimeConfig.model_validate({
        "proxy_config": {"public_listeners": {"api": {"mode": "http", "path": 31801},
                                              "rpc": {"mode": "grpc", "path": 31802}}},
        "container_dals": {"thrift": dal, "cql": dal},
        "wiring": wiring or {},
        "registrations": [{"address": "kv.one,kv.two"}],
    })


SHADOW = config({"thrift": {"mode": "shadow", "target": "cql"}})
SPLIT = config({"thrift": {"mode": "split", "target": "cql", "percent": 10}})
PORTS = {"thrift": {"api": 20000, "rpc": 20001}, "cql": {"api": 20002, "rpc": 20003}}


def desired(cfg: RuntimeConfig, errors: dict[str, str] | None = None) -> Desired:
    specs = {name: build_spec(cfg, name, shard="kv", node="n1", host_ports=PORTS[name],
                              network_mode="host", bind_address="127.0.0.1")
             for name in cfg.container_dals}
    return Desired(specs=specs, errors=errors or {})


def instance(d: Desired, dal: str, health: Health | None) -> list[Observed]:
    """``None``: exited with 137; else running with that health."""
    spec = d.specs[dal]
    if health is None:
        return [Observed(dal, f"c-{dal}", spec.spec_hash, State.EXITED, exit_code=137,
                         ports=spec.host_ports)]
    return [Observed(dal, f"c-{dal}", spec.spec_hash, State.RUNNING, health, spec.host_ports)]


def situation(cfg: RuntimeConfig, thrift: Health | None, cql: Health | None, **kw) -> Situation:
    d = desired(cfg, kw.pop("errors", None))
    observed = instance(d, "thrift", thrift) + instance(d, "cql", cql)
    base = dict(host=HOST, config=cfg, config_version="v1", desired=d, observed=observed,
                action_errors={}, envoy=EnvoyView("ready"), control_up=True)
    return Situation(**{**base, **kw})


def healths(report: gateway_pb2.NodeReport) -> dict[str, str]:
    return {e.dal: gateway_pb2.Health.Name(e.health) for e in report.endpoints}


H, U, S, N = Health.HEALTHY, Health.UNHEALTHY, Health.STARTING, Health.NONE


@pytest.mark.parametrize(
    "cfg, thrift, cql, extra, registered, expect",
    [
        # Both healthy: registered under every address.
        (SHADOW, H, H, {}, True, {"thrift": "HEALTHY", "cql": "HEALTHY"}),
        # No health check counts as healthy.
        (SHADOW, N, N, {}, True, {"thrift": "HEALTHY", "cql": "HEALTHY"}),
        # The shadow target is dead: reported, but clients never reach it (issue #10.13).
        (SHADOW, H, None, {}, True, {"thrift": "HEALTHY", "cql": "UNHEALTHY"}),
        (SHADOW, H, U, {}, True, {"thrift": "HEALTHY", "cql": "UNHEALTHY"}),
        (SHADOW, H, S, {}, True, {"thrift": "HEALTHY", "cql": "STARTING"}),
        # ... nor does a shadow target that cannot be built now.
        (SHADOW, H, None, {"errors": {"dal.cql": "no free host port"}}, True,
         {"thrift": "HEALTHY", "cql": "UNHEALTHY"}),
        # The primary is dead: out of discovery.
        (SHADOW, None, H, {}, False, {"thrift": "UNHEALTHY", "cql": "HEALTHY"}),
        # A split target serves clients: it counts.
        (SPLIT, H, None, {}, False, {"thrift": "HEALTHY", "cql": "UNHEALTHY"}),
        # No wiring: both serve (no single primary), both count.
        (config(), H, U, {}, False, {"thrift": "HEALTHY", "cql": "UNHEALTHY"}),
        # A public listener Envoy cannot bind: out.
        (SHADOW, H, H, {"errors": {"listener.api": "port in use"}}, False,
         {"thrift": "HEALTHY", "cql": "HEALTHY"}),
        # Envoy not ready: out, whatever the DALs.
        (SHADOW, H, H, {"envoy": EnvoyView("starting")}, False,
         {"thrift": "HEALTHY", "cql": "HEALTHY"}),
        # No Envoy run by this agent: the DALs decide.
        (SHADOW, H, H, {"envoy": None}, True, {"thrift": "HEALTHY", "cql": "HEALTHY"}),
        # About to be replaced: draining, and the primary going takes the host out.
        (SHADOW, H, H, {"going": {"thrift"}}, False, {"thrift": "DRAINING", "cql": "HEALTHY"}),
        # Stopping: everything drains and the host deregisters.
        (SHADOW, H, H, {"stopping": True}, False, {"thrift": "DRAINING", "cql": "DRAINING"}),
    ],
)
def test_health_and_registration(cfg, thrift, cql, extra, registered, expect):
    report = build_report(situation(cfg, thrift, cql, **extra))
    assert healths(report) == expect
    assert list(report.registrations) == (["kv.one", "kv.two"] if registered else [])
    state = "stopping" if extra.get("stopping") else ("serving" if registered else "converging")
    assert report.status["state"] == state


@pytest.mark.parametrize(
    "cfg, serving",
    [(SHADOW, {"thrift"}), (SPLIT, {"thrift", "cql"}), (config(), {"thrift", "cql"})],
)
def test_serving_clients(cfg, serving):
    assert serving_clients(cfg) == serving


def test_a_dal_that_is_a_shadow_target_on_one_listener_and_primary_on_another_serves():
    cfg = RuntimeConfig.model_validate({
        "proxy_config": {"public_listeners": {"api": {"mode": "http", "path": 31801},
                                              "own": {"mode": "http", "path": 31802}}},
        "container_dals": {
            "thrift": {"image": "i", "container_listeners": {"api": 8081}},
            "cql": {"image": "i", "container_listeners": {"api": 8081, "own": 8082}},
        },
        "wiring": {"thrift": {"mode": "shadow", "target": "cql"}},
    })
    assert serving_clients(cfg) == {"thrift", "cql"}


def test_endpoints_messages_and_status():
    s = situation(SHADOW, H, None, action_errors={"cql": "image gone"},
                  envoy=EnvoyView("ready", "all listeners up"))
    report = build_report(s)
    assert report.shard == "kv" and report.node_id == "n1" and report.host_address == "10.0.0.1"
    got = sorted((e.dal, e.listener, e.address, e.port, e.message) for e in report.endpoints)
    assert got == [
        ("cql", "api", "127.0.0.1", 20002, "image gone"),
        ("cql", "rpc", "127.0.0.1", 20003, "image gone"),
        ("thrift", "api", "127.0.0.1", 20000, ""),
        ("thrift", "rpc", "127.0.0.1", 20001, ""),
    ]
    assert dict(report.status) == {
        "runtime": "fake", "network_mode": "host", "config_version": "v1",
        "control": "connected", "state": "serving", "envoy": "ready",
        "envoy.message": "all listeners up", "error.dal.cql": "image gone",
    }


def test_exit_code_is_the_message_without_an_action_error():
    report = build_report(situation(SHADOW, None, H))
    assert {e.message for e in report.endpoints if e.dal == "thrift"} == {"exited with code 137 (SIGKILL)"}


def test_no_config_yet_reports_no_endpoints_and_no_registration():
    s = Situation(host=HOST, config=None, config_version="", desired=Desired(), observed=[],
                  action_errors={}, envoy=EnvoyView("starting"))
    report = build_report(s)
    assert list(report.endpoints) == [] and list(report.registrations) == []
    assert report.status["state"] == "converging" and report.status["control"] == "disconnected"


def test_build_report_is_pure():
    s = situation(SHADOW, H, U)
    assert build_report(s) == build_report(s)


@pytest.mark.parametrize(
    "before, after, worse",
    [
        (None, (H, H), False),
        ((H, H), (H, H), False),
        ((H, H), (H, U), True),
        ((H, S), (H, U), False),  # never was healthy
        ((U, U), (H, H), False),
        ((H, H), (H, None), True),
    ],
)
def test_got_worse(before, after, worse):
    def report(pair):
        return None if pair is None else build_report(situation(config(), *pair))

    assert got_worse(report(before), report(after)) is worse


def test_an_old_specs_stopped_instance_is_being_replaced_not_unhealthy():
    d = desired(SHADOW)
    old = Observed("thrift", "c-old", "old-spec", State.EXITED, exit_code=None, ports=PORTS["thrift"])
    report = build_report(Situation(HOST, SHADOW, "v2", d, [old], {}))
    thrift = [e for e in report.endpoints if e.dal == "thrift"]
    assert {(e.health, e.message) for e in thrift} == {(Health.STARTING.to_pb(), "being replaced")}
