"""The tamper check, without Docker: a pinned DAL runs only its pin's digest (by image
ID), a refused one is left as it runs and reported, and the process runtime's digest
of a command's files changes when a file does."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from common.digests import DigestCache, command_files, files_digest
from dgw_api.health import Health
from sidecar.builds import Refused, Verified, check_builds, judge
from sidecar.desired import HostPorts, build_desired
from sidecar.log import EventLog
from sidecar.plan import Observed, State, plan
from sidecar.report import Host, Situation, build_report
from sidecar.runtimes.base import DalRunError
from sidecar.runtimes.process import ProcessRuntime
from xds_server.config.model import RuntimeConfig
from xds_server.deploy.artifacts import Pin

D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64
PIN = Pin("dals/dgw-kv", "image", D1, "dgw-kv:1", "branch main")
CFG = RuntimeConfig.model_validate({
    "proxy_config": {"public_listeners": {"api": {"mode": "http", "path": 31801}}},
    "container_dals": {"kv": {"image": "dgw-kv", "container_listeners": {"api": 8081}}},
    "registrations": [{"address": "kv.one"}],
})
PORTS = HostPorts(port_range=(20000, 20010), in_use=lambda p: False, claimed={})
HOST = Host("kv", "n1", "127.0.0.1", "127.0.0.1", "docker", "host", account="prod", region="us-east-1")


def desired(builds=None, observed=()):
    return build_desired(CFG, observed, PORTS, shard="kv", node="n1", network_mode="host",
                         bind_address="127.0.0.1", builds=builds)


def test_the_pinned_digest_is_verified_or_refused():
    assert judge(PIN, D1) == Verified(D1)
    refused = judge(PIN, D2)
    assert isinstance(refused, Refused)
    assert "image dgw-kv:1 has digest sha256:222222222222" in refused.message
    assert "pins dals/dgw-kv to sha256:111111111111 (branch main)" in refused.message


def test_a_verified_dal_is_created_from_its_image_id_and_an_unpinned_one_keeps_its_hash():
    unpinned = desired().specs["kv"]
    pinned = desired({"kv": Verified(D1)}).specs["kv"]
    assert unpinned.image == "dgw-kv" and unpinned.build is None
    assert pinned.image == D1 and pinned.spec_hash != unpinned.spec_hash
    # A new pin is a new spec: the DAL is recreated from the new build.
    assert desired({"kv": Verified(D2)}).specs["kv"].spec_hash != pinned.spec_hash


def test_a_refused_dal_keeps_its_running_instance_and_says_why():
    running = desired({"kv": Verified(D1)}).specs["kv"]
    old = Observed("kv", "c1", running.spec_hash, State.RUNNING, Health.HEALTHY, running.host_ports)
    goal = desired({"kv": Refused("image dgw-kv:1 has digest …: refused")}, [old])
    assert "kv" not in goal.specs and goal.blocked == {"kv"}
    the_plan = plan(goal.specs, [old], {}, 0.0, keep=goal.blocked)
    assert the_plan.changes() == []
    report = build_report(Situation(HOST, CFG, "v2", goal, [old], {}, control_up=True))
    assert report.status["refused.dal.kv"].startswith("image dgw-kv:1")
    assert [e.health for e in report.endpoints] == [2]  # HEALTHY: the old one serves
    assert list(report.registrations) == ["kv.one"]  # a refusal is not ill health
    assert (report.location.account, report.location.region) == ("prod", "us-east-1")


def test_a_refused_dal_with_nothing_running_is_reported_unhealthy_with_the_reason():
    goal = desired({"kv": Refused("image dgw-kv:1 is not on this host")})
    report = build_report(Situation(HOST, CFG, "v2", goal, [], {}, control_up=True))
    assert list(report.endpoints) == [] and list(report.registrations) == []  # nothing serves
    assert report.status["refused.dal.kv"] == "image dgw-kv:1 is not on this host"


def test_the_command_files_digest_follows_the_files(tmp_path: Path):
    script = tmp_path / "dal.sh"
    script.write_text("#!/bin/sh\nexec sleep 1\n")
    script.chmod(0o755)
    data = tmp_path / "data.txt"
    data.write_text("x")
    assert command_files([str(script), "--flag", str(data)]) == [script.resolve(), data.resolve()]
    assert command_files(["sh", "-c", "true"])[0].name in ("sh", "dash", "bash")
    before = files_digest([script])
    cache = DigestCache()
    assert cache.files_digest([script]) == before
    script.write_text("#!/bin/sh\nexec sleep 2\n")
    os.utime(script, ns=(1, 1))  # even with a crafted mtime, the size and inode changed
    assert files_digest([script]) != before
    assert cache.files_digest([script]) == files_digest([script])


async def test_the_process_runtime_checks_a_commands_files(tmp_path: Path):
    script = tmp_path / "dal.sh"
    script.write_text("#!/bin/sh\nexec sleep 1\n")
    runtime = ProcessRuntime(tmp_path / "state", stop_grace_s=1, log=EventLog("test"))
    pin = Pin("dals/kv", "files", files_digest([script]), str(script), "branch main")
    cfg = RuntimeConfig.model_validate({"container_dals": {"kv": {"container_cmd": [str(script)]}}})
    assert await check_builds(runtime, cfg, {"dals/kv": pin}) == {"kv": Verified(pin.digest)}
    script.write_text("#!/bin/sh\nexec evil\n")
    [refused] = (await check_builds(runtime, cfg, {"dals/kv": pin})).values()
    assert isinstance(refused, Refused) and "the command's files" in refused.message
    with pytest.raises(DalRunError, match="cannot check an image"):
        await runtime.build_digest(PIN, (str(script),))


def test_the_agent_loads_neither_the_config_store_nor_io_for_its_tamper_check():
    import subprocess
    import sys

    code = ("import sys, sidecar.main, sidecar.builds\n"
            "print(any(m.startswith('xds_server.store') for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "False", out.stderr
