"""``dgw token``, ``dgw status`` and ``dgw get`` against a real (in-process) server:
the real ``dgw`` command runs as a child, awaited without blocking the server's loop."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import grpc
import pytest
import yaml

from testkit.ads_client import AdsCall, XdsClient, sotw_request
from tests.cli.run import DGW
from tests.support.server import admin_token
from xds_server.resources import CLUSTER
from xds_server.server import XdsServer

pytestmark = pytest.mark.slow  # each test runs dgw as a child process


class Run:
    def __init__(self, code: int, stdout: str, stderr: str):
        self.code, self.stdout, self.stderr = code, stdout, stderr


async def dgw(tmp_path: Path, *args: str, **env: str) -> Run:
    """The real dgw, with no config file or local token unless given."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("DGW_")}
    base.update({"XDG_CONFIG_HOME": str(tmp_path / "config"), "DGW_DATA_DIR": str(tmp_path / "nowhere")})
    child = await asyncio.create_subprocess_exec(
        DGW, *args, env={**base, **env}, cwd=tmp_path, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(child.communicate(), 60)
    assert child.returncode is not None
    return Run(child.returncode, out.decode(), err.decode())


def target(server: XdsServer, token: str | None = None) -> dict[str, str]:
    env = {"DGW_SERVER": f"http://127.0.0.1:{server.admin_port}"}
    if token:
        env["DGW_TOKEN"] = token
    return env


async def test_tokens_from_the_cli(server: XdsServer, tmp_path):
    admin = target(server, admin_token(server))
    made = await dgw(tmp_path, "token", "create", "--role", "operator", "--name", "ci", "--ttl", "1h", **admin)
    assert made.code == 0, made.stderr
    token = made.stdout.strip()
    assert token.startswith("dgw_") and len(made.stdout.splitlines()) == 1
    assert "shown only this once" in made.stderr and token not in made.stderr
    listed = await dgw(tmp_path, "token", "list", **admin)
    assert "ci" in listed.stdout and "operator" in listed.stdout and token not in listed.stdout
    token_id = token.split("_")[1]
    as_json = json.loads((await dgw(tmp_path, "token", "list", "-o", "json", **admin)).stdout)
    assert {t["id"] for t in as_json["tokens"]} >= {token_id}
    assert (await dgw(tmp_path, "get", "shards", **target(server, token))).code == 0
    revoked = await dgw(tmp_path, "token", "revoke", token_id, **admin)
    assert revoked.code == 0 and f"token {token_id} revoked" in revoked.stdout
    refused = await dgw(tmp_path, "get", "shards", **target(server, token))
    assert refused.code == 1 and refused.stderr.startswith("dgw get: token 'ci' was revoked (no context; token: $DGW_TOKEN")
    bad = await dgw(tmp_path, "token", "create", "--role", "node", "--name", "h", **admin)
    assert bad.code == 1 and "a node token is for one shard" in bad.stderr and "Traceback" not in bad.stderr
    audit = await dgw(tmp_path, "audit", "-o", "yaml", **admin)
    assert [e["action"].split(" ")[0] for e in yaml.safe_load(audit.stdout)["entries"][:3]] == [
        "token.create", "token.revoke", "token.create"]


async def test_without_a_token_the_error_says_where_one_is_looked_for(server: XdsServer, tmp_path):
    run = await dgw(tmp_path, "get", "shards", **target(server))
    assert run.code == 1 and "Traceback" not in run.stderr
    assert "this route needs a token" in run.stderr and "DGW_TOKEN" in run.stderr
    down = await dgw(tmp_path, "status", DGW_SERVER="127.0.0.1:1")
    assert down.code == 1 and "cannot reach the dgw server at http://127.0.0.1:1" in down.stderr


async def test_a_local_server_s_admin_token_is_found_without_set_up(server: XdsServer, tmp_path):
    """Through the server's admin socket, which only the server's own user can hold."""
    data_dir = str(server.admin_token_path.parent)
    run = await dgw(tmp_path, "get", "shards", DGW_DATA_DIR=data_dir)
    assert run.code == 0, run.stderr
    assert run.stdout.splitlines()[0].split() == ["SHARD", "VERSION", "OWNER", "SOURCE", "NODES", "REJECTED"]
    assert run.stdout.splitlines()[1].startswith("kv ")
    # Another address is another server as far as dgw knows: the local token stays home.
    elsewhere = await dgw(tmp_path, "get", "shards", DGW_SERVER=f"127.0.0.1:{server.admin_port}", DGW_DATA_DIR=data_dir)
    assert elsewhere.code == 1 and "this route needs a token" in elsewhere.stderr
    config = tmp_path / "config" / "dgw"
    config.mkdir(parents=True)
    # The older flat shape: one context; the token goes through the socket beside its file.
    (config / "config.yaml").write_text(f"server: 127.0.0.1:{server.admin_port}\ntoken_file: {server.admin_token_path}\n")
    assert (await dgw(tmp_path, "get", "shard", "kv")).code == 0
    (config / "config.yaml").write_text("sever: x\n")
    typo = await dgw(tmp_path, "get", "shards")
    assert typo.code == 1 and "config.yaml:sever: unknown key 'sever'" in typo.stderr


async def test_status_wait_returns_once_synced_and_lists_a_laggard(server: XdsServer, tmp_path):
    env = target(server, admin_token(server))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.xds_port}") as channel:
        client = XdsClient(channel, "good", "kv")
        await client.start()
        try:
            ok = await dgw(tmp_path, "status", "--shard", "kv", "--wait", "--timeout", "20", **env)
            assert ok.code == 0, ok.stderr
            assert "good" in ok.stdout and "SYNCED" in ok.stdout
            # A version as `dgw history` numbers them: that one or a later one.
            at = await dgw(tmp_path, "status", "--shard", "kv", "--wait", "1", "--timeout", "20", **env)
            assert at.code == 0, at.stderr
            ahead = await dgw(tmp_path, "status", "--shard", "kv", "--wait", "2", "--timeout", "0.3", **env)
            assert ahead.code == 1 and "shard kv is at version 1, not 2" in ahead.stderr, ahead.stderr
            lazy = AdsCall(channel)
            try:
                await lazy.send(sotw_request(CLUSTER, node=XdsClient(channel, "lazy", "kv").node))
                await lazy.recv()  # and never ACKed
                late = await dgw(tmp_path, "status", "--shard", "kv", "--wait", "--timeout", "0.5", **env)
                assert late.code == 1
                assert late.stderr.splitlines()[1:] == ["  kv/lazy (sotw): CDS STALE"]
                assert "not every node of shard kv took the current config within 0.5 s" in late.stderr
            finally:
                await lazy.close()
        finally:
            await client.stop()
    missing = await dgw(tmp_path, "status", "--shard", "nope", "--wait", **env)
    assert missing.code == 1 and "no shard 'nope'" in missing.stderr


async def test_apply_of_a_directory_is_one_batch_all_or_nothing(server: XdsServer, tmp_path):
    env = target(server, admin_token(server))
    shards = tmp_path / "fleet"
    shards.mkdir()
    good = (Path(__file__).parents[1] / "examples" / "runtime" / "kv-service.yaml").read_text()
    for name in ("a1", "a2"):
        (shards / f"{name}.yaml").write_text(good)
    (shards / "a3.yaml").write_text("proxy_config: {public_listeners: {x: {mode: carrier-pigeon}}}\n")
    refused = await dgw(tmp_path, "apply", "-f", str(shards), **env)
    assert refused.code == 1 and "a3" in refused.stderr and "nothing was stored" in refused.stderr
    assert "a1" not in server.registry.shards  # all or nothing
    (shards / "a3.yaml").write_text(good)
    done = await dgw(tmp_path, "apply", "-f", str(shards), **env)
    assert done.code == 0, done.stderr
    assert {"shard a1: version 1 (new)", "shard a3: version 1 (new)"} <= set(done.stdout.splitlines())
    assert {"a1", "a2", "a3"} <= set(server.registry.shards)


async def test_apply_twice_is_unchanged_and_delete_refuses_while_a_node_is_connected(server: XdsServer, tmp_path):
    env = target(server, admin_token(server))
    good = tmp_path / "api1.yaml"
    good.write_text((Path(__file__).parents[1] / "examples" / "runtime" / "kv-service.yaml").read_text())
    first = await dgw(tmp_path, "apply", "-f", str(good), "--shard", "api1", **env)
    assert first.code == 0 and first.stdout.strip() == "shard api1: version 1 (new)", first.stderr
    again = await dgw(tmp_path, "apply", "-f", str(good), "--shard", "api1", **env)
    assert again.code == 0 and again.stdout.strip() == "shard api1: version 1 (unchanged)", again.stderr

    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.xds_port}") as channel:
        client = XdsClient(channel, "n1", "api1")
        await client.start()
        try:
            await client.wait_for(lambda c: c.types[CLUSTER].version != "", 20)
            held = await dgw(tmp_path, "delete", "shard", "api1", **env)
            assert held.code == 1 and "n1" in held.stderr and "Traceback" not in held.stderr, held.stderr
            assert "api1" in server.registry.shards
            forced = await dgw(tmp_path, "delete", "shard", "api1", "--force", "-m", "retired", **env)
            assert forced.code == 0, forced.stderr
            assert forced.stdout.strip().startswith("shard api1: deleted (version 2)")
        finally:
            await client.stop()
    gone = await dgw(tmp_path, "get", "shard", "api1", **env)
    assert gone.code == 1 and "no shard 'api1'" in gone.stderr
    history = json.loads((await dgw(tmp_path, "history", "api1", "-o", "json", **env)).stdout)
    newest = history["versions"][0]
    assert (newest["version"], newest["message"]) == (2, "retired")
