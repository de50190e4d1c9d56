"""The launcher: a real Envoy started, ready, asked and stopped; a dying one reported
with its log; a process that ignores TERM is KILLed after the wait."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

from envoy_proxy import BlockingEnvoy, EnvoyExited, EnvoyProcess
from testkit.ports import free_port, port_open

READY_S = 20.0


def static_bootstrap(node_id: str = "n1") -> dict[str, Any]:
    """Live at once: no xDS to wait for. It asks for admin on a loopback port, which
    ``EnvoyProcess`` never grants (admin goes on its owner-only socket)."""
    return {
        "node": {"id": node_id, "cluster": "s1"},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
    }


def group_gone(pid: int) -> bool:
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.mark.envoy
async def test_envoy_starts_is_ready_answers_admin_and_stops(tmp_path: Path) -> None:
    envoy = EnvoyProcess(static_bootstrap(), tmp_path, concurrency=1)
    await envoy.start()
    try:
        await envoy.wait_ready(READY_S)
        # Admin is a Unix socket only its owner may use, whatever the bootstrap said.
        assert envoy.admin_address == str(tmp_path / "envoy.admin.sock")
        assert stat.S_IMODE(os.stat(envoy.admin_socket_path).st_mode) == 0o600
        assert stat.S_IMODE(os.stat(envoy.log_path).st_mode) == 0o600
        assert (await envoy.admin.stats("^server[.]live$")).number("server.live") == 1
        assert await envoy.admin.listener_ports() == frozenset()
        assert envoy.running and envoy.node_id == "n1" and envoy.shard == "s1"
    finally:
        code = await envoy.stop()
    assert code == 0, envoy.log_tail()  # TERM is a clean shutdown for Envoy
    assert not envoy.running and group_gone(envoy.pid)
    assert await envoy.stop() == 0  # a second stop is harmless


@pytest.mark.envoy
async def test_an_envoy_that_dies_is_reported_with_its_log(tmp_path: Path) -> None:
    bad = static_bootstrap() | {"static_resources": {"clusters": [{"name": "c", "connect_timeout": "0s"}]}}
    envoy = EnvoyProcess(bad, tmp_path)
    await envoy.start()
    try:
        with pytest.raises(EnvoyExited, match=r"exited with code 1[\s\S]*connect_timeout"):
            await envoy.wait_ready(READY_S)
    finally:
        await envoy.stop()


@pytest.mark.slow
async def test_stop_kills_what_ignores_term_after_waiting(tmp_path: Path) -> None:
    stubborn = tmp_path / "stubborn"
    # An ignored signal stays ignored across exec: one process that only KILL ends.
    stubborn.write_text("#!/bin/sh\ntrap '' TERM\necho started\nexec sleep 60\n")
    stubborn.chmod(0o755)
    process = EnvoyProcess(static_bootstrap(), tmp_path, binary=str(stubborn))
    await process.start()
    deadline = time.monotonic() + 10
    while "started" not in process.log_tail():  # the trap is set before it says so
        assert time.monotonic() < deadline, "the stub never started"
        await asyncio.sleep(0.01)
    began = time.monotonic()
    code = await process.stop(timeout=0.5)
    took = time.monotonic() - began
    assert code == -signal.SIGKILL
    assert took >= 0.5, "KILL came before TERM's wait was over"
    assert took < 10, "stop outlived its bound (TERM wait + KILL wait)"
    assert group_gone(process.pid)


@pytest.mark.envoy
def test_blocking_envoys_for_synchronous_callers(tmp_path: Path) -> None:
    envoys = [BlockingEnvoy(static_bootstrap(f"n{i}"), tmp_path, name=f"e{i}", concurrency=1) for i in range(2)]
    try:
        for envoy in envoys:
            envoy.wait_ready(READY_S)
            assert envoy.stat("server.live") == 1 and envoy.alive()
        assert len({e.admin_address for e in envoys}) == 2
    finally:
        codes = [envoy.stop() for envoy in envoys]
    assert codes == [0, 0]
    assert all(group_gone(e.pid) for e in envoys)


@pytest.mark.envoy
def test_admin_listens_on_no_port_and_no_other_user_reaches_it() -> None:
    """Issue #17, item 6: a bootstrap that asks for admin on a TCP port gets it on a
    Unix socket in the work directory, mode 0600: another local user can neither dial a
    port nor connect to the socket (here the directory lets them reach it)."""
    port = free_port()
    asked = static_bootstrap() | {"admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}
    workdir = Path(tempfile.mkdtemp(prefix="lp-admin-", dir="/tmp"))
    workdir.chmod(0o711)
    envoy = BlockingEnvoy(asked, workdir, concurrency=1)
    try:
        envoy.wait_ready(READY_S)
        assert not port_open(port)
        assert envoy.admin_text("/ready").strip() == "LIVE"
        if os.geteuid() == 0 and shutil.which("python3"):
            probe = "import socket,sys\ns=socket.socket(socket.AF_UNIX)\ntry: s.connect(sys.argv[1])\nexcept PermissionError: sys.exit(3)"
            other = subprocess.run(["python3", "-c", probe, str(envoy.process.admin_socket_path)], user="nobody",
                                   capture_output=True, timeout=30, cwd="/")  # fmt: skip
            assert other.returncode == 3, other.stderr
    finally:
        envoy.stop()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.mark.envoy
def test_a_listener_socket_is_made_in_the_envoys_own_socket_directory(tmp_path: Path) -> None:
    """Issue #17, item 2: a shard's Unix listener names a socket, and Envoy makes it in
    ``sockets/`` of its working directory (the sidecar's state dir), nowhere else."""
    from google.protobuf.json_format import MessageToDict

    from xds_server.config import load_shard_text
    from xds_server.resources import CLUSTER, LISTENER
    from xds_server.translate import TranslateOptions, build_ir, to_resources

    shard = load_shard_text(
        "proxy_config:\n  public_listeners:\n    db: {mode: tcp, path: db.sock}\n"
        "network_dals:\n  pg:\n    listeners: {db: 'tcp://127.0.0.1:5432'}\n    mode: static\n", "s.yaml", env={})
    resources = to_resources(build_ir(shard, TranslateOptions()))
    static = {kind: [MessageToDict(m) for m in resources.of(url).values()]
              for kind, url in (("listeners", LISTENER), ("clusters", CLUSTER))}  # fmt: skip
    (tmp_path / "sockets").mkdir()
    envoy = BlockingEnvoy(static_bootstrap() | {"static_resources": static}, tmp_path, concurrency=1)
    try:
        envoy.wait_ready(READY_S)
        made = tmp_path / "sockets" / "db.sock"
        assert stat.S_ISSOCK(os.stat(made).st_mode)
    finally:
        envoy.stop()
