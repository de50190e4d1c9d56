"""``dgw get|apply|diff|wiring|history|rollback`` speak the operators' API contract
(/work/notes/api-contract.md, routes 1-8): checked against a small stand-in server that
follows the contract, because the real routes are built apart (and the real server
answers these tests' status, token and report routes elsewhere)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import yaml
from aiohttp import web

from .test_cli_server import dgw

pytestmark = pytest.mark.slow  # each test runs dgw as a child process

TOKEN = "dgw_0123456789ab_" + "a" * 43


class Contract:
    """Shard ``kv`` at version 4; records every request it gets."""

    def __init__(self) -> None:
        self.version = 4
        self.seen: list[dict[str, Any]] = []

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self.record])
        app.router.add_get("/v1/shards", self.list)
        app.router.add_get("/v1/shards/{shard}", self.get)
        app.router.add_put("/v1/shards/{shard}", self.mutate)
        app.router.add_post("/v1/shards/{shard}/wiring", self.mutate)
        app.router.add_post("/v1/shards/{shard}/rollback", self.mutate)
        app.router.add_get("/v1/shards/{shard}/history", self.history)
        return app

    @web.middleware
    async def record(self, request: web.Request, handler: Any) -> web.StreamResponse:
        body = await request.json() if request.can_read_body else None
        self.seen.append({"method": request.method, "path": request.path, "query": dict(request.query),
                          "if_match": request.headers.get("If-Match"), "body": body,
                          "auth": request.headers.get("Authorization")})
        return await handler(request)

    async def list(self, request: web.Request) -> web.Response:
        return web.json_response({"shards": [{"shard": "kv", "version": self.version, "owner": "api",
                                              "source": "api", "source_missing": False, "nodes": ["n1"]}]})

    async def get(self, request: web.Request) -> web.Response:
        if request.match_info["shard"] != "kv":
            return web.json_response({"error": f"no shard {request.match_info['shard']!r}"}, status=404)
        return web.json_response({"shard": "kv", "version": self.version, "owner": "api", "source": "api",
                                  "yaml": "proxy_config: {}\n"}, headers={"ETag": f'"{self.version}"'})

    async def mutate(self, request: web.Request) -> web.Response:
        match = request.headers.get("If-Match")
        if match is None:
            return web.json_response({"error": "If-Match is required"}, status=428)
        exists = request.match_info["shard"] == "kv"
        current = self.version if exists else 0
        if match.strip('"') != str(current):
            return web.json_response({"error": f"shard changed: version {current} is current",
                                      "current_version": current}, status=409)
        body = await request.json()
        if "bad" in json.dumps(body):
            return web.json_response({"problems": [
                {"path": "proxy_config.public_listeners.api.mode", "message": "'bad' is not one of grpc, http, tcp"}]},
                status=400)
        if request.query.get("dry_run") == "true":
            return web.json_response({"dry_run": True, "config_diff": "--- a\n+++ b\n-x: 1\n+x: 2\n",
                                      "resources": {"added": [], "removed": [],
                                                    "changed": [{"type": "routes", "name": "api", "diff": "-w: 1\n+w: 2"}]}})
        previous = current
        if exists:
            self.version += 1
        return web.json_response({"shard": request.match_info["shard"], "version": previous + 1,
                                  "previous_version": previous or None})

    async def history(self, request: web.Request) -> web.Response:
        return web.json_response({"versions": [
            {"version": 4, "author": "ci (0123456789ab)", "time": "2026-01-02T03:04:05+00:00", "message": "split",
             "source": "api", "hash": "ab"},
            {"version": 3, "author": "file:/x/kv.yaml", "time": "2026-01-01T00:00:00+00:00", "message": "",
             "source": "file", "hash": "cd"}], "next_before": None})


@pytest.fixture
async def contract() -> AsyncIterator[tuple[Contract, dict[str, str]]]:
    stand_in = Contract()
    runner = web.AppRunner(stand_in.app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield stand_in, {"DGW_SERVER": f"127.0.0.1:{port}", "DGW_TOKEN": TOKEN}
    finally:
        await runner.cleanup()


async def test_apply_sends_the_version_it_read_and_the_file(contract, tmp_path):
    stand_in, env = contract
    (tmp_path / "kv.yaml").write_text("proxy_config: {}\n")
    run = await dgw(tmp_path, "apply", "-f", "kv.yaml", "--shard", "kv", "-m", "more", **env)
    assert run.code == 0, run.stderr
    assert run.stdout.strip() == "shard kv: version 5 (was 4)"
    get, put = stand_in.seen
    assert (get["method"], put["method"], put["if_match"]) == ("GET", "PUT", '"4"')
    assert put["body"] == {"yaml": "proxy_config: {}\n", "message": "more"}
    assert put["auth"] == f"Bearer {TOKEN}"
    new = await dgw(tmp_path, "apply", "-f", "kv.yaml", "--shard", "fresh", **env)
    assert new.code == 0 and new.stdout.strip() == "shard fresh: version 1 (new)"
    assert stand_in.seen[-1]["if_match"] == '"0"'


async def test_a_stale_version_and_bad_config_print_the_server_s_message(contract, tmp_path):
    stand_in, env = contract
    (tmp_path / "kv.yaml").write_text("proxy_config: {}\n")
    stale = await dgw(tmp_path, "apply", "-f", "kv.yaml", "--shard", "kv", "--force-version", "2", **env)
    assert stale.code == 1 and stale.stderr.strip() == "dgw apply: shard changed: version 4 is current"
    assert [s["method"] for s in stand_in.seen] == ["PUT"]  # --force-version: no GET
    (tmp_path / "bad.yaml").write_text("mode: bad\n")
    bad = await dgw(tmp_path, "apply", "-f", "bad.yaml", "--shard", "kv", **env)
    assert bad.code == 1
    assert bad.stderr.strip() == "dgw apply: proxy_config.public_listeners.api.mode: 'bad' is not one of grpc, http, tcp"
    missing = await dgw(tmp_path, "apply", "-f", "nope.yaml", "--shard", "kv", **env)
    assert missing.code == 1 and "-f nope.yaml: cannot read it" in missing.stderr


async def test_diff_is_a_dry_run(contract, tmp_path):
    stand_in, env = contract
    (tmp_path / "kv.yaml").write_text("x: 2\n")
    run = await dgw(tmp_path, "diff", "-f", "kv.yaml", "--shard", "kv", **env)
    assert run.code == 0, run.stderr
    assert stand_in.seen[-1]["query"] == {"dry_run": "true"}
    assert "dry run: nothing stored" in run.stdout and "+x: 2" in run.stdout
    assert "changed: routes api" in run.stdout and "+w: 2" in run.stdout
    assert stand_in.version == 4


async def test_wiring_operations_send_what_the_contract_names(contract, tmp_path):
    stand_in, env = contract
    split = await dgw(tmp_path, "wiring", "split", "--shard", "kv", "--source", "thrift", "--target", "cql",
                      "--percent", "10", **env)
    assert split.code == 0, split.stderr
    assert stand_in.seen[-1]["body"] == {"op": "split", "source": "thrift", "target": "cql", "percent": 10,
                                         "message": "dgw wiring split"}
    assert stand_in.seen[-1]["if_match"] == '"4"'
    promote = await dgw(tmp_path, "wiring", "promote", "--shard", "kv", "--target", "cql", **env)
    assert promote.code == 0 and stand_in.seen[-1]["body"]["op"] == "promote"
    assert stand_in.seen[-1]["body"].keys() == {"op", "target", "message"}
    shadow = await dgw(tmp_path, "wiring", "shadow", "--shard", "kv", "--source", "a", "--target", "b",
                       "--dry-run", "-o", "json", **env)
    assert json.loads(shadow.stdout)["dry_run"] is True
    lacking = await dgw(tmp_path, "wiring", "split", "--shard", "kv", "--source", "a", "--target", "b", **env)
    assert lacking.code == 1 and lacking.stderr.strip() == "dgw wiring: split needs --percent"
    extra = await dgw(tmp_path, "wiring", "clear", "--shard", "kv", "--source", "a", "--target", "b", **env)
    assert extra.code == 1 and "takes no --target" in extra.stderr


async def test_history_rollback_and_get(contract, tmp_path):
    stand_in, env = contract
    history = await dgw(tmp_path, "history", "kv", **env)
    assert history.code == 0, history.stderr
    lines = history.stdout.splitlines()
    assert lines[0].split() == ["VERSION", "TIME", "AUTHOR", "SOURCE", "MESSAGE"]
    assert lines[1].split()[:5] == ["4", "2026-01-02", "03:04:05", "ci", "(0123456789ab)"]
    assert stand_in.seen[-1]["query"] == {"limit": "20"}
    back = await dgw(tmp_path, "rollback", "kv", "--to", "3", **env)
    assert back.code == 0 and back.stdout.strip() == "shard kv: version 5 (was 4)"
    assert stand_in.seen[-1]["body"] == {"to": 3, "message": "dgw rollback to version 3"}
    shards = await dgw(tmp_path, "get", "shards", "-o", "yaml", **env)
    assert yaml.safe_load(shards.stdout)["shards"][0]["version"] == 5
    one = await dgw(tmp_path, "get", "shard", "kv", **env)
    assert one.stdout.splitlines()[:2] == ["shard:   kv", "version: 5"] and "proxy_config: {}" in one.stdout
    none = await dgw(tmp_path, "get", "shard", "gone", **env)
    assert none.code == 1 and none.stderr.strip() == "dgw get: no shard 'gone'"
