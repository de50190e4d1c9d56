"""``dgw up`` as a new user meets it (issue 10, points 3-6; issue 18): a real xds_server,
sidecar, Envoy and the demo's Key-Value DALs on loopback, started as a child process.

- 3: with no engine, the DALs run as processes and the log says why (never
  ``reason=requested`` when nothing was asked); with an engine and the image, Docker.
- 4: a previous run's cached sidecar config is never applied first.
- 5: a public port held by another program fails the run, naming the port and the
  setting to change; "Data Gateway is up" is not printed.
- 6: once "Data Gateway is up" is printed, a request succeeds.
- 18: the README's put and get through the secured listener work as written, the
  read-only consumer may get and not put, and the shadow copy lands in ``cql``
  (PostgreSQL). Each run has its own PostgreSQL schema and Redis key prefix, removed after.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
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
# The demo's cql DAL stores in this PostgreSQL schema, thrift caches under this Redis prefix.
RUN = f"{os.getpid()}_{secrets.token_hex(3)}"
DEMO_ENV = {"DGW_DEMO_PG_SCHEMA": f"dgw_test_up_{RUN}", "DGW_DEMO_KV_PREFIX": f"dgw-test-up-{RUN}"}


@pytest.fixture(scope="module", autouse=True)
def demo_storage_cleanup() -> Iterator[None]:
    yield
    import redis

    from tests.kv.support import drop_schema

    asyncio.run(drop_schema(DEMO_ENV["DGW_DEMO_PG_SCHEMA"]))
    client = redis.Redis(host="127.0.0.1", port=6379, socket_timeout=5)
    try:
        keys = list(client.scan_iter(match=f"{DEMO_ENV['DGW_DEMO_KV_PREFIX']}*"))
        if keys:
            client.delete(*keys)
    except redis.RedisError:
        pass  # no Redis: the DAL cached nothing
    finally:
        client.close()


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
         "--state-dir", str(workdir / "state"),
         "--node-id", NODE, *extra],
        {"DGW_DEMO_HTTP_PORT": str(http_port), "DGW_DEMO_GRPC_PORT": str(grpc_port), **DEMO_ENV, **env},
        log=workdir / "up.log",
    )
    return Up(child, http_port, grpc_port, workdir / "state")


def get(port: int, path: str = "/") -> tuple[int, str]:
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
    assert 'demo_storage dal=cql engine=postgres reason="PostgreSQL answers at 127.0.0.1:5432' in log


def readme_command(needle: str, up: Up, certs: Path) -> list[str]:
    """The README line holding ``needle``, made to run against this test's ``dgw up``."""
    readme = (ROOT / "README.md").read_text()
    line = next(line for line in readme.splitlines() if needle in line)
    line = line.replace("8980", str(up.grpc_port)).replace(".work/", f"{certs}/")
    argv = shlex.split(line)
    argv[0] = str(ROOT / ".venv" / "bin" / Path(argv[0]).name)
    return argv


def run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)


@pytest.mark.envoy
@pytest.mark.postgres
def test_readme_kv_steps_work(up_without_engine: Up, tmp_path: Path) -> None:
    """The README's secured steps as written: a certificate from `dgw ca issue`, a put and
    a get over mTLS; the read-only consumer may get, not put; the shadow copy is in cql."""
    up = up_without_engine
    server_dir = str(up.child_state / "server")
    issue = readme_command("dgw ca issue --identity demo-app", up, tmp_path)
    for identity in ("demo-app", "demo-reader"):
        argv = [a.replace("demo-app", identity) for a in issue]
        issued = run([*argv, "--data-dir", server_dir])
        assert issued.returncode == 0, issued.stderr

    put = run(readme_command("put demo user-1 name=Ada", up, tmp_path))
    assert put.stdout.strip() == "applied 2", put.stderr
    get_line = readme_command("get demo user-1", up, tmp_path)
    got = run(get_line)
    assert got.stdout.splitlines() == ["user-1  lang = en", "user-1  name = Ada"], got.stderr

    as_reader = [a.replace("demo-app", "demo-reader") for a in get_line]
    assert run(as_reader).stdout.splitlines() == ["user-1  lang = en", "user-1  name = Ada"]
    denied = run([a.replace("demo-app", "demo-reader") for a in readme_command("put demo user-1", up, tmp_path)])
    assert denied.returncode == 1 and "PERMISSION_DENIED" in denied.stderr

    # The shadow copy, in cql's PostgreSQL tables and from the cql DAL itself.
    rows = asyncio.run(_cql_rows(DEMO_ENV["DGW_DEMO_PG_SCHEMA"]))
    assert rows == [("user-1", b"lang", b"en"), ("user-1", b"name", b"Ada")]
    listening = dgw("logs", "cql", "-n", "1000", "--state-dir", str(up.child_state)).stdout
    port = re.findall(r"listener=secure_grpc address=127\.0\.0\.1:(\d+)", listening)[-1]
    direct = run([sys.executable, "-m", "dals.kv", "--target", f"127.0.0.1:{port}", "get", "demo", "user-1",
                  "--with-write-times"])  # fmt: skip
    via_gateway = run([*get_line, "--with-write-times"])
    assert direct.stdout == via_gateway.stdout and "written" in direct.stdout, direct.stderr


async def _cql_rows(schema: str) -> list[tuple[str, bytes, bytes]]:
    import asyncpg

    conn = await asyncpg.connect("postgresql://postgres@127.0.0.1:5432/postgres", timeout=10)
    try:
        rows = await conn.fetch(f"SELECT id, key, value FROM {schema}.items ORDER BY id, key")
    finally:
        await conn.close()
    return [(r["id"], r["key"], r["value"]) for r in rows]


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
    env = {**NO_ENGINE, **DEMO_ENV, "DGW_DEMO_HTTP_PORT": str(http_port), "DGW_DEMO_GRPC_PORT": str(free_port())}
    args = ["--state-dir", str(state)]
    up = dgw("up", "-d", "--xds", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--node-id", NODE,
             *args, env=env, timeout=300)
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
