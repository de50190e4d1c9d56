"""``dgw up`` as a new user meets it (issue 10, points 3-6): a real xds_server,
sidecar, Envoy and sample DALs on loopback, started as a child process.

- 3: with no engine, the DALs run as processes and the log says why (never
  ``reason=requested`` when nothing was asked); with an engine and the image, Docker.
- 4: a previous run's cached sidecar config is never applied first.
- 5: a public port held by another program fails the run, naming the port and the
  setting to change; "Data Gateway is up" is not printed.
- 6: once "Data Gateway is up" is printed, a request succeeds.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.procs import Child, free_port, wait_for

from .run import DGW, ROOT, dgw

BANNER = "Data Gateway is up"
NO_ENGINE = {"DOCKER_HOST": "unix:///nonexistent/docker.sock"}
# Containers are found by shard and node labels: a node id of its own keeps this test's
# DALs apart from a `./dev up` running on the same engine.
NODE = f"test-{os.getpid()}"


@dataclass
class Up:
    child: Child
    http_port: int
    grpc_port: int
    child_state: Path  # its --state-dir (the server's data dir is child_state/server)
    first_answer: tuple[int, str] | None = None  # the request made right after the banner


def start_up(workdir: Path, env: dict[str, str], *extra: str) -> Up:
    http_port, grpc_port = free_port(), free_port()
    child = Child(
        [DGW, "up", "--xds", "127.0.0.1:0", "--admin", "127.0.0.1:0",
         "--envoy-admin-port", str(free_port()), "--state-dir", str(workdir / "state"),
         "--node-id", NODE, *extra],
        {"DGW_DEMO_HTTP_PORT": str(http_port), "DGW_DEMO_GRPC_PORT": str(grpc_port), **env},
        log=workdir / "up.log",
    )
    return Up(child, http_port, grpc_port, workdir / "state")


def get(port: int, path: str = "/hello") -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError as e:  # refused, reset: nothing answers yet
        return 0, str(e)


def wait_banner(up: Up, timeout: float) -> None:
    wait_for(lambda: BANNER in up.child.log() or not up.child.alive(), timeout, what="the banner")
    assert up.child.alive(), up.child.log()
    up.first_answer = get(up.http_port)


def seed_stale_cache(state_dir: Path) -> None:
    """What a previous run left: the sidecar's cached copy of an older config."""
    agent_dir = state_dir / f"demo-{NODE}"
    agent_dir.mkdir(parents=True)
    (agent_dir / "last-config.json").write_text(json.dumps({"version": "stale-version", "yaml": "{}\n"}))


@pytest.fixture(scope="module")
def up_without_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    workdir = tmp_path_factory.mktemp("up")
    seed_stale_cache(workdir / "state")
    up = start_up(workdir, NO_ENGINE)
    try:
        wait_banner(up, 120)
        yield up
    finally:
        up.child.stop(timeout=30)


@pytest.mark.envoy
def test_up_answers_requests_once_it_says_so(up_without_engine: Up) -> None:
    status, body = up_without_engine.first_answer or (0, "")
    assert status == 200, body
    assert '"dal": "thrift"' in body


@pytest.mark.envoy
def test_up_never_applies_a_previous_runs_cached_config(up_without_engine: Up) -> None:
    log = up_without_engine.child.log()
    assert "source=cache" not in log
    assert "stale-version" not in log


@pytest.mark.envoy
def test_up_without_engine_says_why_it_runs_processes(up_without_engine: Up) -> None:
    log = up_without_engine.child.log()
    assert "reason=requested" not in log
    assert 'runtime_selected runtime=process reason="no Docker engine answers' in log


@pytest.mark.envoy
def test_readme_grpc_try_step_works(up_without_engine: Up, tmp_path: Path) -> None:
    """The README's secured gRPC step as written: a certificate from `dgw ca issue`,
    then a call over mTLS that the consumers allow."""
    readme = (ROOT / "README.md").read_text()
    issue = next(line for line in readme.splitlines() if "dgw ca issue --identity demo-app" in line)
    call = next(line for line in readme.splitlines() if "unary_unary" in line and "secure_channel" in line)
    out_dir = tmp_path / "demo-app"
    issue_cmd = shlex.split(issue.replace(".work/demo-app", str(out_dir)))
    issue_cmd[0] = str(ROOT / ".venv" / "bin" / "dgw")
    server_dir = up_without_engine.child_state / "server"
    issued = subprocess.run([*issue_cmd, "--data-dir", str(server_dir)], capture_output=True, text=True, timeout=60)
    assert issued.returncode == 0, issued.stderr
    command = shlex.split(call.replace("8980", str(up_without_engine.grpc_port)).replace(".work/demo-app/", f"{out_dir}/"))
    command[0] = sys.executable  # .venv/bin/python, relative to the checkout

    out = subprocess.run(command, capture_output=True, text=True, timeout=60)

    assert out.stdout.strip() == "b'thrift:hi'", out.stderr


@pytest.mark.envoy
def test_a_busy_public_port_fails_naming_port_and_setting(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        busy = holder.getsockname()[1]
        child = start_up(tmp_path, {**NO_ENGINE, "DGW_DEMO_HTTP_PORT": str(busy)}).child
        try:
            wait_for(lambda: not child.alive() or BANNER in child.log(), 120, what="dgw up to give up")
        finally:
            child.stop(timeout=30)
    log = child.log()
    assert BANNER not in log
    assert child.proc.returncode == 1
    assert f"port 127.0.0.1:{busy} (listener demo.api) is in use by another program" in log
    assert "set DGW_DEMO_HTTP_PORT=" in log


@pytest.mark.envoy
@pytest.mark.docker
def test_up_uses_docker_when_an_engine_has_the_image(tmp_path: Path) -> None:
    up = start_up(tmp_path, {})
    try:
        wait_banner(up, 180)
    finally:
        up.child.stop(timeout=30)
    log = up.child.log()
    assert 'runtime_selected runtime=docker reason="engine reachable, images present"' in log
    assert up.first_answer is not None and up.first_answer[0] == 200, log


@pytest.mark.envoy
def test_up_detached_then_logs_then_down(tmp_path: Path) -> None:
    http_port, state = free_port(), tmp_path / "state"
    env = {**NO_ENGINE, "DGW_DEMO_HTTP_PORT": str(http_port), "DGW_DEMO_GRPC_PORT": str(free_port())}
    args = ["--state-dir", str(state)]
    up = dgw("up", "-d", "--xds", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--node-id", NODE,
             "--envoy-admin-port", str(free_port()), *args, env=env, timeout=300)
    pid = int((state / "up.pid").read_text().split()[0]) if (state / "up.pid").exists() else None
    try:
        assert up.returncode == 0, up.stderr
        assert BANNER in up.stdout and "dgw down" in up.stdout
        assert get(http_port)[0] == 200

        assert "event=listening dal=thrift" in dgw("logs", "thrift", *args).stdout
        assert "runtime_selected" in dgw("logs", "-n", "1000", *args).stdout

        down = dgw("down", *args, timeout=120)
        assert down.returncode == 0, down.stderr
        assert pid is not None and not alive(pid)
        assert get(http_port)[0] == 0  # Envoy is gone too
    finally:
        if pid is not None and alive(pid):
            os.kill(pid, signal.SIGKILL)


def alive(pid: int) -> bool:
    """Running (an exited child nobody reaped yet, a zombie, is not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False


@pytest.mark.envoy
def test_busy_control_plane_ports_fail_cleanly(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        busy = holder.getsockname()[1]
        proc = dgw("up", "--admin", f"127.0.0.1:{busy}", "--xds", "127.0.0.1:0",
                   "--state-dir", str(tmp_path / "state"), env=NO_ENGINE, timeout=120)

    assert proc.returncode == 1
    assert f"dgw up: port 127.0.0.1:{busy} (--admin) of instance default is in use by another program" in proc.stderr
    assert "Traceback" not in proc.stderr
