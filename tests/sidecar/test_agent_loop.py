"""The reconcile loop end to end with an in-memory runtime and a fake Gateway server:
config over WatchConfig, actions, reports, registrations, reconnects. No Docker, no
Envoy: seconds. The agent's clock is a fake one: backoff and grace periods pass when
the test advances it, and "nothing happened" is checked over counted passes."""

from __future__ import annotations

import asyncio
import io
import itertools
import logging

import pytest
import yaml

from dgw_api.health import Health
from dgw_api.v1 import gateway_pb2
from sidecar.agent import Agent
from sidecar.config import SidecarSettings
from sidecar.control import ControlClient
from sidecar.log import EventLog
from sidecar.ports import PortClaims

from .fakes import FakeClock, FakeGateway, FakeRuntime, serve, until

CONFIG = {
    "proxy_config": {"public_listeners": {"alpha": {"mode": "http", "path": 31801},
                                          "beta": {"mode": "http", "path": 31802}}},
    "container_dals": {
        "cql": {"image": "dgw-sample-dal:test", "container_listeners": {"alpha": 8080}},
        "thrift": {"image": "dgw-sample-dal:test", "container_listeners": {"beta": 8080},
                   "env": {"STORAGE_ENGINE": "thrift"}},
    },
    "registrations": [{"address": "shard.kv,shard.kv2"}],
}
BACKOFF_BASE_S = 0.2
GRACE_S = 0.3


class Harness:
    def __init__(self, tmp_path, gateway, port, runtime=None):
        self.gateway = gateway
        self.port = port
        self.clock = FakeClock()
        self.runtime = runtime or FakeRuntime(clock=self.clock)
        self.runtime.clock = self.clock
        self.settings = SidecarSettings(
            server=f"127.0.0.1:{port}", shard="kv", node_id="n1", state_dir=tmp_path,
            envoy=False, resync_s=0.5, backoff_base_s=BACKOFF_BASE_S, reconnect_base_s=0.05,
            reconnect_max_s=0.2, unhealthy_grace_s=GRACE_S,
            # No periodic resend: every report the server gets is a change or a retry.
            report_every_s=3600, dal_ports=(39000, 39099),
        )
        log = EventLog("dgw.sidecar.test", shard="kv", node="n1")
        self.control = ControlClient(
            self.settings.server, shard="kv", node_id="n1", reconnect_base_s=0.05,
            reconnect_max_s=0.2, rpc_timeout_s=1.0, log=log,
        )
        self.agent = Agent(self.settings, self.runtime, self.control, None, tmp_path, log,
                           PortClaims(), clock=self.clock)
        self.stop = asyncio.Event()
        self.task: asyncio.Task | None = None

    def start(self):
        self.task = asyncio.create_task(self.agent.run(self.stop))
        return self

    async def close(self):
        self.stop.set()
        done, _ = await asyncio.wait({self.task}, timeout=10)
        if not done:  # show where the agent is stuck, not just that it is
            stacks = io.StringIO()
            for t in asyncio.all_tasks():
                if t is not asyncio.current_task():
                    t.print_stack(file=stacks)
            self.task.cancel()
            pytest.fail(f"the agent did not stop within 10 s; tasks:\n{stacks.getvalue()}")
        self.task.result()

    async def passes(self, n: int) -> None:
        """Wait until the agent has made ``n`` more reconcile passes."""
        target = self.agent.passes + n
        await until(lambda: self.agent.passes >= target, what=f"{n} reconcile passes")

    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)
        self.agent.wake("test clock advanced")

    def health(self, dal: str) -> str | None:
        last = self.gateway.last
        for e in last.endpoints if last else []:
            if e.dal == dal:
                return gateway_pb2.Health.Name(e.health)
        return None

    def history(self, dal: str) -> list[str]:
        """The health of ``dal`` in the reports sent, repeats collapsed."""
        out: list[str] = []
        for r in self.gateway.reports:
            for e in r.endpoints:
                name = gateway_pb2.Health.Name(e.health)
                if e.dal == dal and (not out or out[-1] != name):
                    out.append(name)
        return out


def push(gateway: FakeGateway, config: dict, version: str) -> None:
    gateway.set_config("kv", version, yaml.safe_dump(config))


@pytest.fixture
async def harness(tmp_path):
    gateway = FakeGateway()
    server, port = await serve(gateway)
    h = Harness(tmp_path, gateway, port)
    h.server = server
    yield h
    if h.task and not h.task.done():
        await h.close()
    await h.server.stop(0)


def registered(h: Harness) -> bool:
    return bool(h.gateway.last and list(h.gateway.last.registrations))


async def test_config_brings_dals_up_and_registers_when_all_healthy(harness):
    push(harness.gateway, CONFIG, "v1")
    harness.start()
    await until(lambda: registered(harness), what="registration")
    report = harness.gateway.last
    assert list(report.registrations) == ["shard.kv", "shard.kv2"]
    assert {(e.dal, e.listener) for e in report.endpoints} == {("cql", "alpha"), ("thrift", "beta")}
    ports = {e.port for e in report.endpoints}
    assert len(ports) == 2 and all(39000 <= p <= 39099 for p in ports)
    assert report.status["runtime"] == "fake" and report.status["config_version"] == "v1"
    assert sorted(harness.runtime.calls) == [("create", "cql"), ("create", "thrift")]


async def test_dead_dal_is_restarted_reported_unhealthy_and_deregistered_meanwhile(harness):
    push(harness.gateway, CONFIG, "v1")
    harness.start()
    await until(lambda: registered(harness), what="registration")
    harness.runtime.calls.clear()
    sent_before = len(harness.gateway.reports)
    harness.runtime.kill("cql")
    await until(lambda: ("restart", "cql") in harness.runtime.calls, what="restart")
    await until(lambda: harness.health("cql") == "HEALTHY" and registered(harness))
    assert harness.history("cql")[-3:] == ["HEALTHY", "UNHEALTHY", "HEALTHY"]
    crash = [(e.message, list(r.registrations)) for r in harness.gateway.reports[sent_before:]
             for e in r.endpoints if e.dal == "cql" and e.health == gateway_pb2.UNHEALTHY]
    assert crash and "exited with code 137" in crash[0][0] and crash[0][1] == []
    assert harness.runtime.calls == [("restart", "cql")]


async def test_a_report_that_got_worse_is_sent_once(harness):
    push(harness.gateway, CONFIG, "v1")
    harness.start()
    await until(lambda: registered(harness), what="registration")
    sent_before = len(harness.gateway.reports)
    harness.runtime.set_health("thrift", Health.UNHEALTHY)
    await until(lambda: harness.health("thrift") == "UNHEALTHY", what="unhealthy report")
    await harness.passes(3)
    after = harness.gateway.reports[sent_before:]
    assert [gateway_pb2.Health.Name(e.health) for r in after for e in r.endpoints
            if e.dal == "thrift"] == ["UNHEALTHY"]
    assert all(a != b for a, b in itertools.pairwise(after)), "a report was sent twice"


async def test_unhealthy_dal_is_restarted_after_its_grace(harness):
    push(harness.gateway, CONFIG, "v1")
    harness.start()
    await until(lambda: harness.health("thrift") == "HEALTHY")
    harness.runtime.set_health("thrift", Health.UNHEALTHY)
    await until(lambda: harness.health("thrift") == "UNHEALTHY", what="unhealthy report")
    await harness.passes(3)
    assert ("restart", "thrift") not in harness.runtime.calls  # still within its grace
    harness.advance(GRACE_S)
    await until(lambda: ("restart", "thrift") in harness.runtime.calls, what="restart")
    await until(lambda: harness.health("thrift") == "HEALTHY")


async def test_changed_env_recreates_only_that_dal_and_removed_dal_is_removed(harness):
    push(harness.gateway, CONFIG, "v1")
    harness.start()
    await until(lambda: registered(harness), what="registration")
    harness.runtime.calls.clear()
    changed = yaml.safe_load(yaml.safe_dump(CONFIG))
    changed["container_dals"]["thrift"]["env"]["STORAGE_ENGINE"] = "cql"
    push(harness.gateway, changed, "v2")
    await until(lambda: ("create", "thrift") in harness.runtime.calls, what="recreate")
    assert harness.runtime.calls == [("remove", "thrift"), ("create", "thrift")]
    del changed["container_dals"]["thrift"]
    del changed["proxy_config"]["public_listeners"]["beta"]
    push(harness.gateway, changed, "v3")
    await until(lambda: "thrift" not in harness.runtime.instances, what="removal")
    await until(lambda: harness.health("thrift") is None)


async def test_failed_create_is_an_error_in_the_report_and_retried_with_backoff(harness):
    harness.runtime.fail_create["thrift"] = "image nope not found locally; build or load it"
    push(harness.gateway, CONFIG, "v1")
    harness.start()
    await until(lambda: harness.health("cql") == "HEALTHY")
    await until(lambda: "error.dal.thrift" in harness.gateway.last.status)
    last = harness.gateway.last
    assert "image nope not found locally" in last.status["error.dal.thrift"]
    assert harness.health("thrift") == "UNHEALTHY" and not last.registrations

    def creates() -> int:
        return harness.runtime.calls.count(("create", "thrift"))

    # The clock stands still: however many passes run, the backoff holds the retry.
    for attempt, wait in [(1, BACKOFF_BASE_S), (2, 2 * BACKOFF_BASE_S), (3, 4 * BACKOFF_BASE_S)]:
        await harness.passes(3)
        assert creates() == attempt
        harness.advance(wait)
        await until(lambda: creates() == attempt + 1, what=f"retry {attempt}")  # noqa: B023


async def test_restarted_agent_adopts_instances_and_uses_its_cached_config(tmp_path):
    gateway = FakeGateway()
    server, port = await serve(gateway)
    push(gateway, CONFIG, "v1")
    first = Harness(tmp_path, gateway, port).start()
    await until(lambda: gateway.last and gateway.last.registrations)
    await first.close()
    assert not gateway.last.registrations and all(
        e.health == gateway_pb2.DRAINING for e in gateway.last.endpoints
    )
    await server.stop(0)
    # The server is gone: the new agent still has its goal (cached) and adopts.
    second = Harness(tmp_path, gateway, port, runtime=FakeRuntime(first.runtime.instances.values()))
    second.start()
    await until(lambda: second.agent.follower.version == "v1", what="cached config")
    await until(lambda: second.agent.reporter.latest
                and len(second.agent.reporter.latest.endpoints) == 2)
    await second.passes(3)
    assert second.runtime.calls == []
    await second.close()


async def test_lost_server_is_retried_with_backoff_and_gets_the_report_again(harness, caplog):
    caplog.set_level(logging.INFO, logger="dgw.sidecar.test")
    push(harness.gateway, CONFIG, "v1")
    harness.start()
    await until(lambda: registered(harness), what="registration")
    await harness.server.stop(0)
    await until(lambda: not harness.agent.follower.connected, what="disconnect noticed")
    fresh = FakeGateway()
    push(fresh, CONFIG, "v1")
    harness.server, _ = await serve(fresh, harness.port)
    await until(lambda: fresh.last is not None and fresh.last.registrations, timeout=5,
                what="report to the returning server")
    assert harness.runtime.calls.count(("create", "cql")) == 1
    text = caplog.text
    assert text.count("event=control_disconnected") == 1  # one warning per outage
    assert "event=control_connected" in text and "down_s=" in text


class CreateFinishesMidObserve(FakeRuntime):
    """Creates finish only while a later pass is observing, so that pass's view of
    the host predates them (as a slow ``docker create`` can)."""

    def __init__(self):
        super().__init__()
        self.pending: list[asyncio.Event] = []

    async def create(self, spec) -> None:
        gate = asyncio.Event()
        self.pending.append(gate)
        await gate.wait()
        await super().create(spec)

    async def observe(self):
        seen = list(self.instances.values())
        while self.pending:
            self.pending.pop().set()
            for _ in range(5):
                await asyncio.sleep(0)
        return seen


async def test_a_create_finishing_while_observing_is_not_done_twice(tmp_path):
    gateway = FakeGateway()
    server, port = await serve(gateway)
    h = Harness(tmp_path, gateway, port, CreateFinishesMidObserve()).start()
    try:
        push(gateway, CONFIG, "v1")
        await until(lambda: gateway.last and list(gateway.last.registrations), what="registration")
        assert sorted(h.runtime.calls) == [("create", "cql"), ("create", "thrift")]
    finally:
        await h.close()
        await server.stop(0)


async def test_killing_only_a_shadow_target_keeps_the_host_registered(harness):
    shadowed = yaml.safe_load(yaml.safe_dump(CONFIG))
    shadowed["container_dals"]["cql"]["container_listeners"] = {"alpha": 8080, "beta": 8081}
    shadowed["container_dals"]["thrift"]["container_listeners"] = {"alpha": 8080, "beta": 8081}
    shadowed["wiring"] = {"thrift": {"mode": "shadow", "target": "cql"}}
    push(harness.gateway, shadowed, "v1")
    harness.start()
    await until(lambda: registered(harness) and harness.health("cql") == "HEALTHY")
    harness.runtime.fail_create["cql"] = "image gone"  # so it stays down a while
    harness.runtime.kill("cql")
    harness.runtime.instances.pop("cql")
    await until(lambda: harness.health("cql") == "UNHEALTHY", what="shadow target reported")
    await harness.passes(3)
    assert all(list(r.registrations) == ["shard.kv", "shard.kv2"]
               for r in harness.gateway.reports if any(e.dal == "cql" and e.health
                                                       == gateway_pb2.UNHEALTHY for e in r.endpoints))
    assert registered(harness) and harness.health("thrift") == "HEALTHY"
