"""The process runtime on its own: DALs as local process groups, Docker's health
check semantics run on the host, exits noticed at once, adoption by a new agent."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest

from dgw_api.health import Health
from sidecar.log import EventLog
from sidecar.plan import State
from sidecar.runtimes.base import DalRunError
from sidecar.runtimes.process import ProcessRuntime
from sidecar.spec import build_spec
from tests.support.procs import free_port, port_open
from xds_server.config.model import RuntimeConfig

from .fakes import until

PY = sys.executable
LOG = EventLog("dgw.sidecar.test")


def spec(port: int, *, test=None, cmd=None, name="d", **hc):
    dal = {"container_cmd": cmd or [PY, "-m", "dals.sample"], "container_listeners": {"http": 8080}}
    if test is not None:
        dal["healthcheck"] = {"test": test, "interval": "200ms", "timeout": "2s", "retries": 2, **hc}
    cfg = RuntimeConfig.model_validate({"container_dals": {name: dal}})
    return build_spec(cfg, name, shard="s", node="n", host_ports={"http": port},
                      network_mode="process", bind_address="127.0.0.1")


PROBE = ["CMD-SHELL", f"{PY} -m dals.sample.probe http://127.0.0.1:$DGW_LISTENER_HTTP_PORT/health"]


@pytest.fixture
async def runtime(tmp_path):
    wakes: list[str] = []
    rt = ProcessRuntime(tmp_path, stop_grace_s=2, log=LOG)
    await rt.start(wakes.append)
    rt.wakes = wakes
    yield rt
    for o in await rt.observe():
        await rt.remove(o)
    await rt.close()


async def only(rt):
    (o,) = await rt.observe()
    return o


async def test_dal_runs_on_its_host_port_and_turns_healthy(runtime):
    port = free_port()
    await runtime.create(spec(port, test=PROBE))
    o = await only(runtime)
    assert o.state is State.RUNNING and o.health is Health.STARTING and o.ports == {"http": port}
    await until(lambda: port_open(port), 10, "the DAL listening on its assigned port")
    await until(lambda: runtime._live[o.ref].health is Health.HEALTHY, 5, "healthy")
    assert any("health_status: healthy" in w for w in runtime.wakes)


async def test_failing_check_is_unhealthy_after_retries_but_not_within_start_period(runtime):
    started = time.monotonic()
    await runtime.create(spec(free_port(), test=["CMD-SHELL", "exit 1"], start_period="1s"))
    o = await only(runtime)
    live = runtime._live[o.ref]
    await until(lambda: live.health is Health.UNHEALTHY, 5, "unhealthy")
    # 200 ms interval and 2 retries would say unhealthy at 0.4 s; failures inside the
    # 1 s start period do not count.
    assert time.monotonic() - started >= 1.0
    assert (await only(runtime)).health is Health.UNHEALTHY


async def test_a_check_that_hangs_fails_by_its_timeout(runtime):
    await runtime.create(spec(free_port(), test=["CMD", "sleep", "30"], timeout="300ms"))
    live = runtime._live[(await only(runtime)).ref]
    await until(lambda: live.health is Health.UNHEALTHY, 5, "unhealthy by timeout")
    assert "timed out after 0.3s" in live.health_output


async def test_a_killed_dal_is_an_exit_with_docker_like_code_and_its_output(runtime):
    port = free_port()
    await runtime.create(spec(port))
    o = await only(runtime)
    await until(lambda: port_open(port), 10)
    # The DAL binds, then logs it: kill it only once the line checked below is written.
    log = Path(runtime._by_ref(o.ref).log_path)
    await until(lambda: "event=listening" in log.read_text(errors="replace"), 10, "listening logged")
    os.kill(int(o.ref.split(":")[1]), signal.SIGKILL)
    await until(lambda: any("process exited" in w for w in runtime.wakes), 5, "exit noticed")
    dead = await only(runtime)
    assert dead.state is State.EXITED and dead.exit_code == 137
    assert any("event=listening" in line for line in await runtime.logs(dead, 5))


async def test_shell_command_group_is_killed_whole(runtime):
    port = free_port()
    await runtime.create(spec(port, cmd=f"{PY} -m dals.sample"))  # sh -c, a child python
    await until(lambda: port_open(port), 10)
    await runtime.remove(await only(runtime))
    await until(lambda: not port_open(port), 5, "the shell's child gone too")


async def test_missing_binary_is_a_clear_error(runtime):
    with pytest.raises(DalRunError, match="cannot run '/nonexistent/dal': no such file"):
        await runtime.create(spec(free_port(), cmd=["/nonexistent/dal"]))


async def test_a_new_runtime_adopts_live_processes(tmp_path):
    port = free_port()
    first = ProcessRuntime(tmp_path, stop_grace_s=2, log=LOG)
    await first.start(lambda r: None)
    await first.create(spec(port, test=PROBE))
    o = await only(first)
    await until(lambda: port_open(port), 10)
    await first.close()  # the agent goes away; the DAL stays

    wakes: list[str] = []
    second = ProcessRuntime(tmp_path, stop_grace_s=2, log=LOG)
    await second.start(wakes.append)
    try:
        adopted = await only(second)
        assert adopted.ref == o.ref and adopted.state is State.RUNNING
        await until(lambda: second._live[o.ref].health is Health.HEALTHY, 5, "adopted health")
        os.kill(int(o.ref.split(":")[1]), signal.SIGKILL)
        await until(lambda: any("process exited" in w for w in wakes), 5, "adopted exit noticed")
        assert (await only(second)).state is State.EXITED
    finally:
        for inst in await second.observe():
            await second.remove(inst)
        await second.close()
