"""Least privilege on the gateway host (issue #17, items 2 and 10): the sidecar trusts
no state directory another user can write, writes nothing through a symbolic link, keeps
its files owner-only; a DAL inherits none of the sidecar's environment and may run as
an unprivileged user."""

from __future__ import annotations

import asyncio
import os
import stat
import sys
from pathlib import Path

import pytest

from sidecar.config import SidecarSettings
from sidecar.errors import SidecarError
from sidecar.log import EventLog
from sidecar.main import run_sidecar
from sidecar.runtimes.base import DalRunError
from sidecar.runtimes.process import ProcessRuntime
from sidecar.spec import build_spec
from tests.support.procs import free_port
from xds_server.config.model import RuntimeConfig

from .fakes import until

LOG = EventLog("dgw.sidecar.test")
ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="runs a DAL as another user: needs root")


def _spec(out: Path, port: int, name: str = "d"):  # type: ignore[no-untyped-def]
    """A DAL that writes its uid and environment to ``out`` and stays up."""
    script = ("import json,os,sys,time; json.dump({'uid': os.getuid(), 'env': dict(os.environ)}, "
              "open(sys.argv[1], 'w')); time.sleep(60)")  # fmt: skip
    dal = {"container_cmd": [sys.executable, "-c", script, str(out)], "container_listeners": {"http": 8080},
           "env": {"GIVEN": "yes"}}  # fmt: skip
    cfg = RuntimeConfig.model_validate({"container_dals": {name: dal}})
    return build_spec(cfg, name, shard="s", node="n", host_ports={"http": port},
                      network_mode="process", bind_address="127.0.0.1")


def test_a_state_dir_others_can_write_is_refused(tmp_path: Path) -> None:
    from sidecar.state_dir import StateDirError, prepare

    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(StateDirError, match="writable by others"):
        prepare(shared, shared / "s-n")
    above = tmp_path / "group"
    above.mkdir()
    above.chmod(0o775)
    with pytest.raises(StateDirError, match="writable by others"):
        prepare(above / "state", above / "state" / "s-n")
    # The sidecar refuses to start there, before it writes anything.
    settings = SidecarSettings(shard="s", node_id="n", state_dir=shared, insecure=True, runtime="process",
                               server=f"127.0.0.1:{free_port()}")  # fmt: skip

    async def start() -> None:
        await asyncio.wait_for(run_sidecar(settings, asyncio.Event()), 20)

    with pytest.raises(SidecarError, match="writable by others"):
        asyncio.run(start())
    assert not (shared / "s-n").exists()


def test_a_node_dir_that_is_a_link_is_refused_and_a_good_one_is_made_private(tmp_path: Path) -> None:
    from sidecar.state_dir import StateDirError, prepare

    state = tmp_path / "state"
    state.mkdir(mode=0o755)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (state / "s-n").symlink_to(elsewhere)
    with pytest.raises(StateDirError, match="not a directory"):
        prepare(state, state / "s-n")
    prepare(state, state / "t-n")
    assert stat.S_IMODE(os.stat(state / "t-n").st_mode) == 0o711  # others pass through, never list
    assert (state / "t-n" / "sockets").is_dir()


async def test_no_log_is_written_through_a_planted_link(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    runtime = ProcessRuntime(tmp_path, stop_grace_s=2, log=LOG)
    await runtime.start(lambda reason: None)
    (tmp_path / "logs" / "d.log").symlink_to(victim)
    try:
        with pytest.raises(DalRunError, match="symbolic link"):
            await runtime.create(_spec(tmp_path / "out.json", free_port()))
    finally:
        await runtime.close()
    assert victim.read_text() == "precious\n"


async def test_a_dal_inherits_nothing_of_the_sidecar_and_its_files_are_private(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("DGW_JOIN_TOKEN", "dgw_000000000000_" + "s" * 43)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "leaked")
    out = tmp_path / "out.json"
    runtime = ProcessRuntime(tmp_path, stop_grace_s=2, log=LOG)
    await runtime.start(lambda reason: None)
    try:
        await runtime.create(_spec(out, free_port()))
        await until(lambda: out.exists() and out.stat().st_size > 0, 10, "the DAL's report")
        env = _read(out)["env"]
        assert "DGW_JOIN_TOKEN" not in env and "AWS_SECRET_ACCESS_KEY" not in env
        assert env["GIVEN"] == "yes" and env["DGW_LISTENER_HTTP_PORT"] and "PATH" in env
        for private in (tmp_path / "logs" / "d.log", tmp_path / "processes.json"):
            assert stat.S_IMODE(private.stat().st_mode) == 0o600, private
    finally:
        for o in await runtime.observe():
            await runtime.remove(o)
        await runtime.close()


@ROOT_ONLY
@pytest.mark.skipif(not Path("/usr/bin/python3").exists(), reason="a Python the user nobody may run")
async def test_dals_run_as_the_dal_user(tmp_path: Path) -> None:
    from sidecar.runtimes.run_as import resolve

    # The DAL says who it is on its output, which goes to the log the sidecar opened.
    cfg = RuntimeConfig.model_validate({"container_dals": {"d": {
        "container_cmd": ["/usr/bin/python3", "-c", "import os,time; print('uid', os.getuid(), os.environ.get('USER'), "
                          "flush=True); time.sleep(60)"],
        "container_listeners": {"http": 8080}}}})  # fmt: skip
    spec = build_spec(cfg, "d", shard="s", node="n", host_ports={"http": free_port()},
                      network_mode="process", bind_address="127.0.0.1")
    nobody = resolve("nobody")
    runtime = ProcessRuntime(tmp_path, stop_grace_s=2, log=LOG, run_as=nobody)
    await runtime.start(lambda reason: None)
    try:
        await runtime.create(spec)
        (observed,) = await runtime.observe()
        await until(lambda: any("uid" in line for line in _lines(tmp_path / "logs" / "d.log")), 10, "the DAL's line")
        assert f"uid {nobody.uid} nobody" in _lines(tmp_path / "logs" / "d.log")
        assert observed.state.value == "running"
    finally:
        for o in await runtime.observe():
            await runtime.remove(o)
        await runtime.close()


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def test_the_dal_user_must_be_an_unprivileged_user_of_this_host() -> None:
    from sidecar.runtimes.run_as import RunAsError, resolve

    with pytest.raises(RunAsError, match="no such user"):
        resolve("no-such-user-lp17")
    with pytest.raises(RunAsError, match="root"):
        resolve("0") if os.geteuid() == 0 else resolve("root")


def _read(path: Path) -> dict:  # type: ignore[type-arg]
    import json

    return json.loads(path.read_text())  # type: ignore[no-any-return]
