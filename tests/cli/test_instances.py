"""Issue 22 with real gateways: two ``dgw up -d --name a|b`` instances side by side in
one HOME seeded with a stale ``~/.local/share/dgw/``, each one's README commands acting
on it only; and one test per numbered item that needs a running gateway.

Both instances start once for the module (process runtime, free ports). The test of
the two instances stops them both: it runs last."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from testkit.ports import free_port, port_open
from testkit.wait import wait_until

from .home import Home, stale_home
from .run import ROOT

pytestmark = pytest.mark.envoy  # real gateways: Envoy, the sample DALs, the server

README = (ROOT / "README.md").read_text()
# A shard of one sample DAL (a process where there is no Docker engine, a container where
# there is one).
EXTRA_SHARD = """
proxy_config:
  public_listeners:
    api: {mode: http, path: THE_PORT}
container_dals:
  one:
    image: dgw-sample-dal:test
    container_cmd: python3 -m dals.sample
    container_listeners: {api: 8081}
    env: {DGW_DAL_NAME: one}
    healthcheck:
      test: [CMD-SHELL, "python3 -m dals.sample.probe http://127.0.0.1:$${DGW_LISTENER_API_PORT}/health"]
      interval: 1s
      timeout: 1s
      retries: 3
"""


class Instances:
    def __init__(self, home: Home) -> None:
        self.home = home
        self.banners: dict[str, str] = {}

    def record(self, name: str) -> dict[str, Any]:
        listed = json.loads(self.home.dgw("ls", "-o", "json").stdout)
        found: dict[str, Any] = next(i for i in listed if i["name"] == name)
        return found

    def port(self, name: str, listener: str) -> int:
        return int(self.record(name)["record"]["shards"]["demo"]["listeners"][listener])

    def pid(self, name: str) -> int | None:
        found: int | None = self.record(name)["pid"]
        return found


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Instances]:
    home = stale_home(tmp_path_factory.mktemp("instances"))
    instances = Instances(home)
    nodes = []
    try:
        for name in ("a", "b"):
            run = home.dgw("up", "-d", "--name", name, timeout=300)
            assert run.returncode == 0, run.stderr
            instances.banners[name] = run.stdout
            nodes.append(instances.record(name)["record"]["node_id"])
        yield instances
    finally:
        for name in instances.banners:
            pid = instances.pid(name)
            if pid is not None and home.dgw("down", "--name", name, timeout=120).returncode != 0:
                os.kill(pid, signal.SIGTERM)
        forget_demo_storage(nodes)


def forget_demo_storage(nodes: list[str]) -> None:
    """What the instances' demo DALs kept outside their state dirs: the cql DAL's
    PostgreSQL schema and the thrift DAL's Redis keys, named for each node id."""
    import asyncio

    import redis

    from tests.kv.support import drop_schema

    client = redis.Redis(host="127.0.0.1", port=6379, socket_timeout=5)
    try:
        for node in nodes:
            asyncio.run(drop_schema("dgw_demo_cql_" + re.sub(r"[^a-z0-9_]", "_", node)))
            keys = list(client.scan_iter(match=f"dgw-demo-{node}:*"))
            if keys:
                client.delete(*keys)
    except (OSError, redis.RedisError):
        pass  # no PostgreSQL or Redis: the DALs kept nothing there
    finally:
        client.close()


def _get(url: str, token: str | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError as e:
        return 0, str(e)


def _readme_line(text: str) -> str:
    return next(line for line in README.splitlines() if text in line)


def _kv(port: int, words: str, certs: Path | None = None) -> subprocess.CompletedProcess[str]:
    """The README's KV calls: with ``certs``, to the gateway's mTLS listener as written
    (``put ...``, ``get ...``); without, to a client proxy."""
    if certs is None:
        line = _readme_line("python -m dals.kv --target 127.0.0.1:15980 get").replace("15980", str(port))
    else:
        line = (_readme_line("python -m dals.kv --target 127.0.0.1:8980 --tls .work/demo-app")
                .replace("8980", str(port)).replace(".work/demo-app", str(certs)))  # fmt: skip
    command = shlex.split(line, comments=True)
    at = command.index("put") if "put" in command else command.index("get")
    command = [sys.executable, *command[1:at], *shlex.split(words)]  # .venv/bin/python: relative to the checkout
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


# --- one test per item that needs a gateway -----------------------------------------------


def test_item1_the_current_context_s_server_token_and_ca_are_used_and_said(up: Instances) -> None:
    home = up.home
    status = home.dgw("status", "-v")  # b is current: it was started last
    assert status.returncode == 0, status.stderr  # not "unknown token" from the stale data dir
    assert re.search(r"^demo\s+b-[0-9a-f]{6}\s", status.stdout, re.M), status.stdout
    assert "dgw: context up-b (contexts: " in status.stderr
    assert f"token: context up-b's token_file {home.state_dir('b')}/server/admin.token" in status.stderr
    # Another instance named by its server: its own context, token and all.
    admin_a = up.record("a")["record"]["admin"]
    other = home.dgw("status", "--server", admin_a)
    assert other.returncode == 0, other.stderr
    assert re.search(r"^demo\s+a-[0-9a-f]{6}\s", other.stdout, re.M) and "b-" not in other.stdout
    issued = home.dgw("ca", "issue", "--identity", "demo-app", "--out", str(home.path / "item1"))
    assert f"issuer:      {home.state_dir('b')}/server/ca/ca.crt (context up-b)" in issued.stdout


def test_item2_logs_of_an_unknown_name_list_those_that_exist(up: Instances) -> None:
    run = up.home.dgw("logs", "nosuchdal")
    assert run.returncode == 1
    assert "instance b has no DAL 'nosuchdal': its DALs are cql, thrift" in run.stderr


def test_item3_the_join_port_is_shown_and_a_refusal_names_it(up: Instances) -> None:
    join = up.record("b")["record"]["join"]
    assert f"join {join}" in up.banners["b"]
    run = up.home.dgw("client-proxy", "--shard", "demo", "--listener", "secure_grpc",
                      "--listen", f"127.0.0.1:{free_port()}", "--join", "dgw_000000000000_no-such-token")  # fmt: skip
    assert run.returncode == 1
    assert f"--join: the server at --join-server {join} refused" in run.stderr, run.stderr
    assert f"context up-b: --xds {up.record('b')['record']['xds']}, --join-server {join}" in run.stderr


def test_item4_no_gateway_registered_is_said_and_given_up_on(up: Instances, tmp_path: Path) -> None:
    certs = tmp_path / "app"
    assert up.home.dgw("ca", "issue", "--identity", "demo-app", "--out", str(certs)).returncode == 0
    run = up.home.dgw("client-proxy", "--shard", "demo", "--listener", "secure_grpc", "--address", "nosuch",
                      "--listen", f"127.0.0.1:{free_port()}", "--identity", str(certs / "cert.pem"),
                      str(certs / "key.pem"), "--ready-timeout", "3", "--log-level", "WARNING")  # fmt: skip
    assert run.returncode == 1
    assert "not serving after 3 s (--ready-timeout); still waiting for: a healthy gateway of shard demo " \
           "registered under nosuch for listener secure_grpc" in run.stderr, run.stderr


def test_item5_a_second_up_of_a_running_instance_says_what_to_do(up: Instances) -> None:
    again = up.home.dgw("up", "--name", "a")
    assert again.returncode == 1
    assert "instance a is already running" in again.stderr
    assert "`dgw down --name a` stops it; `dgw up --name OTHER` starts another beside it" in again.stderr
    assert "--data-dir" not in again.stderr
    # A named instance's banner acts on it whichever context is current.
    assert "dgw --context up-a status" in up.banners["a"] and "dgw --context up-b status" in up.banners["b"]


def test_item9_metrics_count_the_one_envoy_s_stream_once(up: Instances) -> None:
    record = up.record("b")["record"]
    token = Path(record["state_dir"], "server", "admin.token").read_text().strip()
    status, text = _get(f"{record['admin']}/metrics", token)
    assert status == 200, text
    assert 'dgw_xds_connected_streams{protocol="sotw",shard="demo"} 1.0' in text


def test_item10_a_shard_applied_to_a_running_up_gets_its_gateway_item6_advice_in_cli_words(
    up: Instances, tmp_path: Path
) -> None:
    port = free_port()
    shard = tmp_path / "extra.yaml"
    shard.write_text(EXTRA_SHARD.replace("THE_PORT", str(port)))
    applied = up.home.dgw("--context", "up-a", "apply", "-f", str(shard), "--shard", "extra")
    assert applied.returncode == 0, applied.stderr

    wait_until(lambda: _get(f"http://127.0.0.1:{port}/hello")[0] == 200, 120, what="the new shard's gateway")
    assert '"dal": "one"' in _get(f"http://127.0.0.1:{port}/hello")[1]
    wait_until(lambda: "Shard extra is up:" in up.home.dgw("logs", "--name", "a", "-n", "200").stdout, 30,
               what="dgw up saying so")  # fmt: skip
    assert "extra (api:" in up.home.dgw("ls").stdout

    # Item 6: its Envoy is connected, so a delete is refused, with the CLI's flag as advice.
    held = up.home.dgw("--context", "up-a", "delete", "shard", "extra")
    assert held.returncode == 1
    assert "stop them first, or delete with --force" in held.stderr and "?force=true" not in held.stderr
    gone = up.home.dgw("--context", "up-a", "delete", "shard", "extra", "--force")
    assert gone.returncode == 0, gone.stderr
    wait_until(lambda: not port_open(port), 30, what="the gateway of the deleted shard to stop")


# --- items that need a gateway of their own ---------------------------------------------


def test_item4_with_no_server_the_proxy_says_what_it_waits_for_and_stops_at_once(tmp_path: Path) -> None:
    """(Giving up with the reasons: test_item4_no_gateway_registered_is_said_and_given_up_on.)"""
    home = stale_home(tmp_path)
    certs = tmp_path / "app"  # from the stale CA: the proxy never gets as far as using it
    assert home.dgw("ca", "issue", "--identity", "demo-app", "--out", str(certs)).returncode == 0
    log = tmp_path / "proxy.log"
    proxy = home.spawn(["client-proxy", "--shard", "demo", "--listener", "secure_grpc", "--listen",
                        f"127.0.0.1:{free_port()}", "--identity", str(certs / "cert.pem"), str(certs / "key.pem"),
                        "--xds", f"127.0.0.1:{free_port()}", "--log-level", "WARNING"], log)  # fmt: skip
    try:
        wait_until(lambda: "client proxy: waiting" in proxy.log() or not proxy.alive(), 60, what="a word from it")
        assert "client proxy: waiting (5 s) for: the xds_server at --xds 127.0.0.1:" in proxy.log(), proxy.log()
        assert "nothing answers there" in proxy.log()
        proxy.proc.send_signal(signal.SIGINT)  # Ctrl-C, to the proxy itself
        assert proxy.proc.wait(timeout=10) == 130, proxy.log()
        assert "client proxy: 127.0.0.1:" not in proxy.log()  # it never said it was ready
    finally:
        proxy.stop()


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A temporary directory with a short path: the sidecar's SDS socket lives under it."""
    path = Path(tempfile.mkdtemp(prefix="dgw-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.mark.docker
def test_item2_logs_of_a_docker_dal_are_its_container_s_not_a_stale_file(short_tmp: Path) -> None:
    home = stale_home(short_tmp, docker=True)
    shards = short_tmp / "shards"  # one DAL: one container to make
    shards.mkdir()
    (shards / "solo.yaml").write_text(EXTRA_SHARD.replace("THE_PORT", str(free_port())))
    node = f"dk-{os.getpid()}"
    stale = home.state_dir("dk") / f"solo-{node}" / "logs" / "one.log"  # what a process-runtime run left
    stale.parent.mkdir(parents=True)
    stale.write_text("STALE: a line of an earlier run\n")
    up = home.dgw("up", "-d", "--name", "dk", "--runtime", "docker", "--node-id", node, "--config-dir", str(shards),
                  timeout=300)  # fmt: skip
    try:
        assert up.returncode == 0, up.stderr
        logs = home.dgw("logs", "one")
        assert logs.returncode == 0, logs.stderr
        assert "event=listening dal=one" in logs.stdout and "STALE" not in logs.stdout
        missing = home.dgw("logs", "nosuchdal")
        assert missing.returncode == 1 and "instance dk has no DAL 'nosuchdal': its DALs are one" in missing.stderr
    finally:
        down = home.dgw("down", "--name", "dk", timeout=120)
    assert down.returncode == 0, down.stderr


# --- the acceptance: two instances, each one's README commands on it only ----------------


def test_two_instances_side_by_side_each_readme_command_acts_on_its_own(up: Instances, tmp_path: Path) -> None:
    home = up.home
    listed = home.dgw("ls").stdout
    assert re.search(r"^\s+a\s+running", listed, re.M) and re.search(r"^\*\s+b\s+running", listed, re.M)
    for name, flags in (("a", ["--context", "up-a"]), ("b", [])):  # b is current: the README as written
        other = "b" if name == "a" else "a"
        status = home.dgw(*flags, "status")
        assert re.search(rf"^demo\s+{name}-[0-9a-f]{{6}}\s", status.stdout, re.M), status.stdout
        assert f"{other}-" not in status.stdout

        # ca issue + the mTLS calls: this instance's CA, this instance's listener and data.
        certs = tmp_path / f"demo-app-{name}"
        issue = shlex.split(_readme_line("dgw ca issue --identity demo-app").replace(".work/demo-app", str(certs)))
        issued = home.dgw(*flags, *issue[1:])
        assert issued.returncode == 0 and f"(context up-{name})" in issued.stdout, issued.stderr
        port = up.port(name, "secure_grpc")
        before = _kv(port, "get demo user-1", certs)
        assert before.returncode == 0 and before.stdout == "", before  # nothing of the other instance's
        put = _kv(port, f"put demo user-1 name={name}", certs)
        assert put.stdout.strip() == "applied 1", put.stderr
        assert _kv(port, "get demo user-1", certs).stdout.strip() == f"user-1  name = {name}"
        assert _kv(up.port(other, "secure_grpc"), "get demo user-1", certs).returncode != 0  # the other CA refuses it

        # client-proxy --join: a one-time client token of this instance, its join port.
        made = home.dgw(*flags, *shlex.split(_readme_line("dgw token create --role client"), comments=True)[1:])
        assert made.returncode == 0, made.stderr
        listen = free_port()
        proxy_words = shlex.split(_readme_line("dgw client-proxy --shard demo --listener secure_grpc --address"
                                                " demo.dgwkv --join").replace("15980", str(listen))
                                  .replace("TOKEN", made.stdout.strip()))  # fmt: skip
        proxy = home.spawn([*flags, *proxy_words[1:], "--log-level", "WARNING"], tmp_path / f"proxy-{name}.log")
        try:
            wait_until(lambda p=proxy: "client proxy: 127.0.0.1:" in p.log() or not p.alive(), 60,
                       what=f"the client proxy of {name}")  # fmt: skip
            assert f"context up-{name}: --xds" in proxy.log()
            via = _kv(listen, "get demo user-1")
            assert via.stdout.strip() == f"user-1  name = {name}", (via.stderr, proxy.log())
        finally:
            proxy.stop(timeout=30)

        # logs: this instance's own log and DALs.
        own = home.dgw("logs", "--name", name, "-n", "500").stdout
        assert f"(instance {name}, shards: demo)" in own and f"(instance {other}," not in own
        assert "event=listening dal=thrift" in home.dgw(*flags, "logs", "thrift").stdout

    # down: each stops its own; the other one keeps serving until its turn.
    a_port, b_port = up.port("a", "api"), up.port("b", "api")
    down = home.dgw("down", "--name", "a", timeout=120)
    assert down.returncode == 0 and "stopped instance a" in down.stderr, down.stderr
    assert not port_open(a_port) and _get(f"http://127.0.0.1:{b_port}/")[0] == 200
    assert home.dgw("status").returncode == 0  # b's context is still current
    down = home.dgw("down", timeout=120)  # the current context's instance: b
    assert down.returncode == 0 and "stopped instance b" in down.stderr and "context up-b removed" in down.stderr
    assert not port_open(b_port)
    assert "up-" not in home.dgw("config", "get-contexts").stdout
