"""The reconcile loop end to end with an in-memory runtime and a fake Gateway server:
config over WatchConfig, actions, reports, registrations, reconnects. No Docker, no
Envoy: seconds."""

from __future__ import annotations

import asyncio
import logging

import pytest
import yaml

from dgw_api.v1 import gateway_pb2
from sidecar.agent import Agent
from sidecar.config import SidecarSettings
from sidecar.control import ControlClient
from sidecar.log import EventLog
from sidecar.plan import Health

from .fakes import FakeGateway, FakeRuntime, serve, until

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


class Harness:
    def __init__(self, tmp_path, gateway, port, runtime=None):
        self.gateway = gateway
        self.port = port
        self.runtime = runtime or FakeRuntime()
        self.settings = SidecarSettings(
            server=f"127.0.0.1:{port}", shard="kv", node_id="n1", state_dir=tmp_path,
            envoy=False, resync_s=0.5, backoff_base_s=0.2, reconnect_base_s=0.05,
            reconnect_max_s=0.2, unhealthy_grace_s=0.3, report_every_s=0.5,
            dal_ports=(39000, 39099),
        )
        log = EventLog("dgw.sidecar.test", shard="kv", node="n1")
        self.control = ControlClient(
            self.settings.server, shard="kv", node_id="n1", reconnect_base_s=0.05,
            reconnect_max_s=0.2, rpc_timeout_s=1.0, log=log,
        )
        self.agent = Agent(self.settings, self.runtime, self.control, None, tmp_path, log)
        self.stop = asyncio.Event()
        self.task: asyncio.Task | None = None

    def start(self):
        self.task = asyncio.create_task(self.agent.run(self.stop))
        return self

    async def close(self):
        self.stop.set()
        await asyncio.wait_for(self.task, 10)

    def health(self, dal: str) -> str | None:
        last = self.gateway.last
        for e in last.endpoints if last else []:
            if e.dal == dal:
                return gateway_pb2.Health.Name(e.health)
        return None


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


async def test_config_brings_dals_up_and_registers_when_all_healthy(harness):
    push(harness.gateway, CONFIG, "v1")
    harness.start()
    await until(lambda: harness.gateway.last and list(harness.gateway.last.registrations)
                == ["shard.kv", "shard.kv2"], what="registration")
    report = harness.gateway.last
    assert {(e.dal, e.listener) for e in report.endpoints} == {("cql", "alpha"), ("thrift", "beta")}
    ports = {e.port for e in report.endpoints}
    assert len(ports) == 2 and all(39000 <= p <= 39099 for p in ports)
    assert report.status["runtime"] == "fake" and report.status["config_version"] == "v1"
    assert sorted(harness.runtime.calls) == [("create", "cql"), ("create", "thrift")]


async def test_dead_dal_is_restarted_reported_unhealthy_and_deregistered_meanwhile(harness):
    push(harness.gateway, CONFIG, "v1")
    harness.start()
    await until(lambda: harness.gateway.last and harness.gateway.last.registrations)
    harness.runtime.calls.clear()
    harness.runtime.kill("cql")
    await until(lambda: ("restart", "cql") in harness.runtime.calls, what="restart")
    await until(lambda: harness.health("cql") == "HEALTHY" and harness.gateway.last.registrations)
    seen = [(gateway_pb2.Health.Name(e.health), list(r.registrations))
            for r in harness.gateway.reports for e in r.endpoints if e.dal == "cql"]
    assert ("UNHEALTHY", []) in seen or ("DRAINING", []) in seen
    crash = [e.message for r in harness.gateway.reports for e in r.endpoints
             if e.dal == "cql" and e.health == gateway_pb2.UNHEALTHY]
    assert crash and "exited with code 137" in crash[0]
    assert ("restart", "thrift") not in harness.runtime.calls


async def test_unhealthy_dal_is_restarted_after_its_grace(harness):
    push(harness.gateway, CONFIG, "v1")
    harness.start()
    await until(lambda: harness.health("thrift") == "HEALTHY")
    harness.runtime.set_health("thrift", Health.UNHEALTHY)
    await until(lambda: harness.health("thrift") == "UNHEALTHY", what="unhealthy report")
    await until(lambda: ("restart", "thrift") in harness.runtime.calls, what="restart")
    await until(lambda: harness.health("thrift") == "HEALTHY")


async def test_changed_env_recreates_only_that_dal_and_removed_dal_is_removed(harness):
    push(harness.gateway, CONFIG, "v1")
    harness.start()
    await until(lambda: harness.gateway.last and harness.gateway.last.registrations)
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


async def test_failed_create_is_an_error_in_the_report_and_others_are_unaffected(harness):
    harness.runtime.fail_create["thrift"] = "image nope not found locally; build or load it"
    push(harness.gateway, CONFIG, "v1")
    harness.start()
    await until(lambda: harness.health("cql") == "HEALTHY")
    await until(lambda: "error.dal.thrift" in harness.gateway.last.status)
    last = harness.gateway.last
    assert "image nope not found locally" in last.status["error.dal.thrift"]
    assert harness.health("thrift") == "UNHEALTHY" and not last.registrations
    # Backoff: a handful of attempts, not one per pass.
    await asyncio.sleep(0.5)
    assert 1 < harness.runtime.calls.count(("create", "thrift")) <= 4


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
    await until(lambda: second.agent.config_version == "v1", what="cached config")
    await until(lambda: second.agent.report and len(second.agent.report.endpoints) == 2)
    await asyncio.sleep(0.3)
    assert second.runtime.calls == []
    await second.close()


async def test_lost_server_is_retried_with_backoff_and_gets_the_report_again(harness, caplog):
    caplog.set_level(logging.INFO, logger="dgw.sidecar.test")
    push(harness.gateway, CONFIG, "v1")
    harness.start()
    await until(lambda: harness.gateway.last and harness.gateway.last.registrations)
    await harness.server.stop(0)
    await until(lambda: not harness.agent.control_connected, what="disconnect noticed")
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
