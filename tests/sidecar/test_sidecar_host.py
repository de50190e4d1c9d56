"""``dgw sidecar`` on a real host: a real ``dgw server``, the agent's own Envoy, and
the DALs as Docker containers (host networking, loopback) or as local processes.

Every test runs once per runtime. Measured times are printed (``pytest -s``) as
``timing name=... seconds=...`` lines.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import time

import pytest

from tests.support.procs import Child, wait_for

from .host import Host, until

pytestmark = pytest.mark.envoy


def timing(name: str, seconds: float, host: Host) -> None:
    print(f"\ntiming name={name} runtime={host.runtime} seconds={seconds:.3f}")


def up(host: Host, *extra: str) -> float:
    """Write the two-DAL shard, start the sidecar; seconds to the first served request."""
    host.write(host.config())
    started = time.monotonic()
    host.start_sidecar(*extra)
    until(lambda: host.answered_by("alpha") == "cql", 60,
          what=lambda: f"first request through Envoy\n{host.log()[-3000:]}")
    return time.monotonic() - started


def test_two_dals_come_up_healthy_and_serve_through_envoy(host: Host):
    cold = up(host)
    timing("sidecar_cold_start_to_first_request", cold, host)
    host.wait_healthy("cql", "thrift")
    until(lambda: host.answered_by("beta") == "thrift", 10, what="beta through Envoy")
    # Both DALs said 8080; each got its own host port and was told it.
    ports = {host.endpoint("cql")["port"], host.endpoint("thrift")["port"]}
    assert len(ports) == 2 and 8080 not in ports
    until(host.registered, 10, what="registration in discovery")
    status = host.report()["status"]
    assert status["runtime"] == host.runtime and status["envoy"] == "ready"
    assert host.events("runtime_selected", runtime=host.runtime)
    if host.runtime == "docker":
        # The seed's health checks say http://envoy:...: the name is the proxy.
        out = host.docker.containers.get(host.instances()["cql"]).exec_run(
            ["python3", "-c", "import socket; print(socket.gethostbyname('envoy'))"]
        )
        assert out.output.decode().strip() == "127.0.0.1"


def test_killed_dal_is_restarted_and_the_other_keeps_serving(host: Host):
    up(host)
    host.wait_healthy("cql", "thrift")
    before = host.instances()["cql"]
    failures = []
    host.kill_dal("cql")
    killed = time.monotonic()
    while time.monotonic() - killed < 60:
        if host.answered_by("beta") != "thrift":
            failures.append(time.monotonic() - killed)
        if host.health("cql") == "HEALTHY" and host.answered_by("alpha") == "cql":
            break
    else:
        raise AssertionError(f"cql never served again\n{host.log()[-3000:]}")
    back = time.monotonic() - killed
    timing("dal_killed_to_routed_again", back, host)
    assert failures == [], "the other DAL must keep serving while cql restarts"
    crashed = host.events("dal_crashed", dal="cql")
    assert crashed and crashed[0]["exit_code"] == "137"
    health = [e["health"] for e in host.events("endpoint_health", dal="cql")]
    # Killed: unhealthy, restarted, healthy again. A restart slowed by a loaded host
    # may fail a health check while starting (STARTING, UNHEALTHY) before it passes.
    after = health[health.index("UNHEALTHY"):]
    assert "STARTING" in after and after[-1] == "HEALTHY", health
    if host.runtime == "docker":
        assert host.instances()["cql"] == before  # restarted, not recreated


def test_dal_failing_its_health_check_is_never_routed_to(host: Host):
    config = host.config()
    config["proxy_config"]["public_listeners"]["gamma"] = {"mode": "http", "path": host.public["gamma"]}
    sick = host.dal("gamma")
    sick["healthcheck"]["test"] = ["CMD-SHELL", "exit 1"]
    config["container_dals"]["sick"] = sick
    host.write(config)
    host.start_sidecar()
    host.wait_healthy("cql", "thrift")
    seen = set()
    deadline = time.monotonic() + 4
    while time.monotonic() < deadline:
        seen.add(host.health("sick"))
        assert host.answered_by("gamma") is None, "a DAL that never passed its check got traffic"
    assert "HEALTHY" not in seen and seen & {"STARTING", "UNHEALTHY"}
    assert not host.registered()


def test_health_report_changes_envoy_routing(host: Host):
    """Behaviour only: how fast is ``dgw bench sidecar-recovery``'s to measure."""
    flag = host.workdir / "unhealthy"
    config = host.config()
    config["container_dals"]["cql"]["env"] = {"SAMPLE_UNHEALTHY_FILE": "/tmp/dgw-unhealthy"
                                              if host.runtime == "docker" else str(flag)}
    host.write(config)
    host.start_sidecar()
    host.wait_healthy("cql", "thrift")
    until(lambda: host.answered_by("alpha") == "cql", 10)
    if host.runtime == "docker":
        host.docker.containers.get(host.instances()["cql"]).exec_run(
            ["python3", "-c", "open('/tmp/dgw-unhealthy', 'w').close()"]
        )
    else:
        flag.touch()
    until(lambda: host.answered_by("alpha") is None, 15, what="Envoy stops routing to cql")
    routed_away = time.time()
    reported = [e for e in host.events("endpoint_health", dal="cql") if e["health"] == "UNHEALTHY"]
    assert reported, host.log()[-2000:]
    delay = routed_away - reported[-1]["at"]
    timing("health_report_to_envoy_routing_change", delay, host)


def test_env_change_recreates_only_that_dal_and_removal_removes_it(host: Host):
    up(host)
    host.wait_healthy("cql", "thrift")
    before = host.instances()
    config = host.config()
    config["container_dals"]["thrift"]["env"]["STORAGE_ENGINE"] = "cql"
    host.write(config)
    until(lambda: host.instances().get("thrift") not in (None, before["thrift"]), 30,
          what="thrift recreated")
    host.wait_healthy("cql", "thrift")
    assert host.instances()["cql"] == before["cql"]
    del config["container_dals"]["thrift"]
    del config["proxy_config"]["public_listeners"]["beta"]
    host.write(config)
    until(lambda: "thrift" not in host.instances(), 30, what="thrift removed")
    until(lambda: host.health("thrift") is None, 10)
    assert host.instances()["cql"] == before["cql"]
    assert host.answered_by("alpha") == "cql"


def test_restarted_sidecar_recreates_nothing(host: Host):
    up(host)
    host.wait_healthy("cql", "thrift")
    until(host.registered, 10)
    before = host.instances()
    host.stop_sidecar()
    until(lambda: not host.registered(), 5, what="deregistered on SIGTERM")
    assert {e["health"] for e in host.report()["endpoints"]} == {"DRAINING"}
    started = time.monotonic()
    host.start_sidecar()
    until(lambda: host.answered_by("alpha") == "cql", 30, what="served after restart")
    timing("sidecar_restart_to_first_request", time.monotonic() - started, host)
    until(host.registered, 10)
    assert host.instances() == before
    # Both creates are the first sidecar's: the second one adopted what it found.
    assert len(host.events("dal_create")) == 2


def test_killed_envoy_comes_back_with_its_config(host: Host):
    up(host)
    host.wait_healthy("cql", "thrift")
    os.kill(host.envoy_pid(), signal.SIGKILL)
    killed = time.monotonic()
    until(lambda: host.events("envoy_exited"), 10, what="envoy exit noticed")
    until(lambda: host.answered_by("alpha") == "cql" and host.answered_by("beta") == "thrift",
          30, what="envoy back with its config")
    timing("envoy_killed_to_serving_again", time.monotonic() - killed, host)
    until(host.registered, 10)


def test_unreachable_server_keeps_the_host_serving_and_the_sidecar_reconnects(host: Host):
    up(host)
    host.wait_healthy("cql", "thrift")
    host.server.stop()
    until(lambda: host.events("control_disconnected"), 10, what="disconnect noticed")
    for _ in range(20):
        assert host.answered_by("alpha") == "cql" and host.answered_by("beta") == "thrift"
    host.kill_dal("thrift")  # the agent still keeps its DALs alive on its own
    until(lambda: host.answered_by("beta") == "thrift", 30, what="thrift back without server")
    host.server.start()
    until(lambda: host.health("cql") == "HEALTHY", 30, what="report to the returning server")
    until(lambda: [e for e in host.events("control_connected") if e["down_s"] != "-"], 10,
          what="the config watch reconnected")
    assert len(host.events("control_disconnected", level="WARNING")) == 1  # one per outage


def test_bad_inputs_are_clear_errors_and_the_other_dals_are_unaffected(host: Host):
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    taken = blocker.getsockname()[1]
    try:
        config = host.config()
        listeners = config["proxy_config"]["public_listeners"]
        listeners["gamma"] = {"mode": "http", "path": host.public["gamma"]}
        listeners["taken"] = {"mode": "http", "path": taken}
        bad_cmd = host.dal("gamma", container_cmd=["/nonexistent/dal-binary"])
        config["container_dals"]["badcmd"] = bad_cmd
        if host.runtime == "docker":
            config["container_dals"]["noimage"] = host.dal("taken", image="dgw-no-such-image:1")
            missing = "image dgw-no-such-image:1 not found locally; build or load it (docker images)"
        else:
            config["container_dals"]["noimage"] = host.dal("taken", container_cmd="no-such-command-x")
            missing = "cannot run 'no-such-command-x': no such file or directory"
        host.write(config)
        host.start_sidecar()
        host.wait_healthy("cql", "thrift")
        until(lambda: host.answered_by("alpha") == "cql" and host.answered_by("beta") == "thrift", 30)

        def status() -> dict:
            return host.report().get("status", {})

        until(lambda: {"error.dal.badcmd", "error.dal.noimage", "error.listener.taken"} <= set(status()),
              30, what=lambda: f"errors in the status report: {status()}")
        s = status()
        assert "/nonexistent/dal-binary" in s["error.dal.badcmd"]
        assert missing in s["error.dal.noimage"]
        assert f"port {taken} of public listener taken is in use" in s["error.listener.taken"]
        assert host.health("badcmd") == "UNHEALTHY" and host.health("noimage") == "UNHEALTHY"
        log = host.log()
        assert "/nonexistent/dal-binary" in log and "goal_unreachable" in log
        assert "Traceback" not in log
        # Retries back off instead of spinning.
        attempts = len(host.events("dal_failed", dal="badcmd")) + len(host.events("dal_crashed", dal="badcmd"))
        assert attempts < 12
        assert host.answered_by("alpha") == "cql" and host.answered_by("beta") == "thrift"
    finally:
        blocker.close()


def test_bad_arguments_are_clear_errors(tmp_path):
    child = Child([sys.executable, "-m", "dgw.cli", "sidecar", "--shard", "s", "--server", "nohost"],
                  log=tmp_path / "out.log")
    wait_for(lambda: not child.alive(), 15)
    assert child.proc.returncode == 2
    assert "--server 'nohost' is not HOST:PORT" in child.log()
    assert "Traceback" not in child.log()
