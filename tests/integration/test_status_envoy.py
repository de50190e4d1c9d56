"""Fleet status from a real Envoy: SYNCED once it has taken the config, NACKED with
Envoy's own message when it rejects one (a listener on a port another process holds),
SYNCED again after a good one; ``dgw status --wait`` returns or lists the laggards."""

from __future__ import annotations

import json
import socket

import pytest
import yaml

from testkit.ports import free_port
from testkit.wait import wait_until
from tests.cli.run import dgw

pytestmark = pytest.mark.envoy


def shard(port: int, dal_port: int) -> dict:
    return {
        "proxy_config": {"public_listeners": {"api": {"mode": "http", "path": port}}},
        "container_dals": {"kv": {"container_listeners": {"api": dal_port}}},
    }


def cli(stack, *args: str):
    env = {"DGW_SERVER": f"127.0.0.1:{stack.server.admin_port}", "DGW_TOKEN": stack.server.token}
    return dgw(*args, env=env, timeout=60)


def lds(stack) -> dict:
    nodes = stack.server.get("/v1/status?shard=kv")["nodes"]
    return nodes[0]["types"]["LDS"] if nodes else {}


def test_status_follows_envoy_through_a_nack_and_back(stack):
    dal_port = free_port()
    stack.server.write_shard("kv", shard(free_port(), dal_port))
    wait_until(lambda: stack.server.get("/v1/status?shard=kv")["shards"].get("kv", {}).get("config_version"),
               20, what="the shard loaded")
    stack.envoy("kv")
    done = cli(stack, "status", "--shard", "kv", "--wait", "--timeout", "20")
    assert done.returncode == 0, done.stderr
    assert "node-1" in done.stdout and "SYNCED" in done.stdout
    assert ("DELTA" if stack.delta else "SOTW") in done.stdout

    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        taken = held.getsockname()[1]
        stack.server.write_shard("kv", shard(taken, dal_port))
        rejected = wait_until(lambda: lds(stack).get("state") == "NACKED" and lds(stack), 20, what="LDS NACKED")
        assert str(taken) in rejected["nack"] and "in use" in rejected["nack"], rejected["nack"]

        shown = cli(stack, "status", "--shard", "kv")
        assert shown.returncode == 0 and "NACKED" in shown.stdout
        assert f"node-1 LDS NACKED: {rejected['nack'][:40]}" in shown.stdout
        late = cli(stack, "status", "--shard", "kv", "--wait", "--timeout", "0.5")
        assert late.returncode == 1
        assert "kv/node-1" in late.stderr and "LDS NACKED" in late.stderr and "Traceback" not in late.stderr

    stack.server.write_shard("kv", shard(free_port(), dal_port))
    back = cli(stack, "status", "--shard", "kv", "--wait", "--timeout", "20", "-o", "json")
    assert back.returncode == 0, back.stderr
    row = json.loads(back.stdout)["nodes"][0]
    assert row["in_sync"] and {t["state"] for t in row["types"].values()} == {"SYNCED"}
    version = json.loads(back.stdout)["shards"]["kv"]["config_version"]
    exact = cli(stack, "status", "--shard", "kv", "--wait", str(version), "--timeout", "5")
    assert exact.returncode == 0, exact.stderr
    wrong = cli(stack, "status", "--shard", "kv", "--wait", "no-such-version", "--timeout", "0.3")
    assert wrong.returncode == 1 and "not no-such-version" in wrong.stderr
    log = stack.server.log()
    assert str(stack.server.data_dir / "admin.token") in log and stack.server.token not in log


def test_a_nacked_api_change_is_shown_and_a_rollback_brings_every_node_back(stack, tmp_path):
    """Through the operators' CLI only: apply, apply a change Envoy rejects, see it
    NACKED with Envoy's message, roll back, wait until every node is SYNCED."""
    dal_port = free_port()
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text(yaml.safe_dump(shard(free_port(), dal_port)))
    created = cli(stack, "apply", "-f", str(good), "--shard", "kv")
    assert created.returncode == 0 and "version 1 (new)" in created.stdout, created.stderr
    stack.envoy("kv")
    assert cli(stack, "status", "--shard", "kv", "--wait", "--timeout", "20").returncode == 0

    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        bad.write_text(yaml.safe_dump(shard(held.getsockname()[1], dal_port)))
        applied = cli(stack, "apply", "-f", str(bad), "--shard", "kv", "-m", "move the listener")
        assert applied.returncode == 0 and "version 2 (was 1)" in applied.stdout, applied.stderr
        wait_until(lambda: lds(stack).get("state") == "NACKED", 20, what="LDS NACKED")
        shown = cli(stack, "status", "--shard", "kv")
        assert "NACKED" in shown.stdout and "in use" in shown.stdout

        rolled = cli(stack, "rollback", "kv", "--to", "1")
        assert rolled.returncode == 0 and "version 3 (was 2)" in rolled.stdout, rolled.stderr
        back = cli(stack, "status", "--shard", "kv", "--wait", "--timeout", "20", "-o", "json")
        assert back.returncode == 0, back.stderr
        row = json.loads(back.stdout)["nodes"][0]
        assert {t["state"] for t in row["types"].values()} == {"SYNCED"}
    history = cli(stack, "history", "kv", "-o", "json")
    assert [v["source"] for v in json.loads(history.stdout)["versions"]] == ["rollback", "api", "api"]
