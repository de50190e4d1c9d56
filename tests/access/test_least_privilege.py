"""Least privilege on the admin API (issue #17): what a caller sends never becomes a
name, a line of the audit log or of the operator's terminal; join tokens are one-time
and short-lived; a refused request spends nothing; no identity of the platform can be
minted for an application."""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import json
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest

from dgw.cli import main as dgw_main
from tests.support.server import admin_token
from xds_server.server import XdsServer

from .conftest import SHARD, Api

HOSTILE = "x\r\n42  2026-01-01 00:00  admin  api  accepted\x1b[8m\u202e"


async def _dgw(*argv: str) -> tuple[int, str, str]:
    """``dgw ARGV`` in this process (in a thread: the server's loop keeps serving)."""
    out, err = io.StringIO(), io.StringIO()

    def run() -> int:
        with redirect_stdout(out), redirect_stderr(err):
            return dgw_main(list(argv))

    code = await asyncio.to_thread(run)
    return code, out.getvalue(), err.getvalue()


async def _audit(server: XdsServer) -> list[str]:
    assert server.store is not None
    return [f"{e.actor} {e.action} {e.shard} {e.reason}" for e in await server.store.audit_log(limit=1000)]


@pytest.mark.parametrize("raw", ["demo%0A", "x%0D%0A42%20accepted%1B%5B8m", "demo%E2%80%AE", "de%00mo"])
async def test_a_name_with_control_characters_is_refused_before_anything_records_it(
    server: XdsServer, api: Api, raw: str
):
    before = await _audit(server)
    for token in (None, admin_token(server)):
        status, body = await api.call("PUT", f"/v1/shards/{raw}", token, json={"yaml": SHARD},
                                      headers={"If-Match": '"0"'})  # fmt: skip
        assert status == 400, body
        assert "shard" in body["error"] and "\n" not in body["error"] and "\x1b" not in body["error"]
    assert await _audit(server) == before
    status, body = await api.call("GET", "/v1/shards", admin_token(server))
    assert [s["shard"] for s in body["shards"]] == ["kv"]


async def test_token_names_and_report_names_are_matched_whole(server: XdsServer, api: Api):
    admin = admin_token(server)
    status, body = await api.call("POST", "/v1/tokens", admin, json={"role": "reader", "name": "ci\n"})
    assert status == 400 and "name must be" in body["error"]
    node = await api.token(admin, "node", "kv-reporter", shard="kv", one_time=False)
    report = {"shard": "kv", "node_id": "n1\n", "endpoints": []}
    status, body = await api.call("POST", "/v1/reports", node, json=report)
    assert status == 400 and "node_id" in body["error"]
    assert "n1\n" not in server.registry.shards["kv"].nodes


async def test_the_cli_prints_control_characters_escaped(server: XdsServer, api: Api):
    admin = admin_token(server)
    status, body = await api.call("PUT", "/v1/shards/hostile", admin, json={"yaml": SHARD, "message": HOSTILE})
    assert status == 200, body
    flags = ["--server", f"http://127.0.0.1:{server.admin_port}", "--token", admin]
    for argv in (["history", "hostile"], ["audit"], ["get", "shard", "hostile"]):
        code, out, _ = await _dgw(*argv, *flags)
        assert code == 0
        assert "\x1b" not in out and "\r" not in out and "\u202e" not in out, argv
    code, out, _ = await _dgw("history", "hostile", *flags)
    assert len(out.splitlines()) == 2 and "\\r\\n42" in out  # header + one version, escaped


async def test_join_tokens_are_one_time_and_short_lived_by_default(server: XdsServer, api: Api):
    admin = admin_token(server)
    for role, extra in (("node", {"shard": "kv"}), ("client", {"identity": "demo-app"})):
        status, body = await api.call("POST", "/v1/tokens", admin, json={"role": role, "name": f"{role}-join", **extra})
        assert status == 200, body
        assert body["one_time"] is True
        expires = dt.datetime.fromisoformat(body["expires_at"]) - dt.datetime.fromisoformat(body["created_at"])
        assert expires == dt.timedelta(hours=1)
    # An operators' token stays as asked; a join token may still be made reusable on purpose.
    status, body = await api.call("POST", "/v1/tokens", admin, json={"role": "reader", "name": "r"})
    assert body["one_time"] is False and body["expires_at"] is None
    status, body = await api.call("POST", "/v1/tokens", admin,
                                  json={"role": "node", "name": "asg", "shard": "kv", "one_time": False})  # fmt: skip
    assert body["one_time"] is False and body["expires_at"] is not None


async def test_the_cli_makes_one_time_join_tokens_as_documented(server: XdsServer):
    admin = admin_token(server)
    code, out, err = await _dgw("token", "create", "--role", "node", "--shard", "kv", "--name", "host-1",
                                "-o", "json", "--server", f"http://127.0.0.1:{server.admin_port}", "--token", admin)  # fmt: skip
    assert code == 0, err
    made = json.loads(out)
    assert made["one_time"] is True and made["expires_at"] is not None


async def test_a_refused_request_does_not_spend_a_one_time_token(server: XdsServer, api: Api):
    admin = admin_token(server)
    once = await api.token(admin, "client", "app-join", identity="demo-app")
    status, _ = await api.call("GET", "/v1/shards", once)  # a client token reads nothing
    assert status == 403
    assert server.tokens is not None
    record = server.tokens.get(once.split("_")[1])
    assert record is not None and record.used_at is None
    reporter = await api.token(admin, "node", "once", shard="kv")
    report = {"shard": "kv", "node_id": "n1", "endpoints": []}
    assert (await api.call("POST", "/v1/reports", reporter, json={**report, "shard": "other"}))[0] == 403
    assert (await api.call("POST", "/v1/reports", reporter, json=report))[0] == 200
    status, body = await api.call("POST", "/v1/reports", reporter, json=report)
    assert status == 401 and "one-time" in body["error"]


@pytest.mark.parametrize("identity", ["gateway-kv", "gateway-demo"])
async def test_no_client_token_names_a_gateway(server: XdsServer, api: Api, identity: str):
    status, body = await api.call("POST", "/v1/tokens", admin_token(server),
                                  json={"role": "client", "name": "evil", "identity": identity})  # fmt: skip
    assert status == 400 and "reserved for gateways" in body["error"]


async def test_a_deeply_nested_body_is_a_400_and_its_refusal_is_audited(server: XdsServer, api: Api):
    admin = admin_token(server)
    deep = "[" * 50_000 + "]" * 50_000
    for method, path in (("PUT", "/v1/shards/kv2"), ("POST", "/v1/tokens"), ("POST", "/v1/batch")):
        status, body = await api.call(method, path, admin, data=deep, headers={"Content-Type": "application/json"})
        assert status == 400, (path, body)
        assert "nested" in body["error"]
    reasons = await _audit(server)
    assert sum("nested deeper than 32" in r for r in reasons) == 3, reasons


def test_hostile_text_is_one_line_when_printed():
    from common.text import printable
    from dgw.ops import table

    assert len(table(["A"], [[HOSTILE], ["b"]]).splitlines()) == 3  # one line per row
    assert printable("a\x1b[2Jb\u202ec\x00") == "a\\x1b[2Jb\\u202ec\\x00"
    assert printable("ok\nline", keep="\n") == "ok\nline"


def test_names_are_matched_whole():
    from common.names import is_node_id, is_shard, is_token_name

    assert is_shard("demo") and not is_shard("demo\n") and not is_shard("de mo")
    assert is_node_id("a" * 64) and not is_node_id("a" * 65) and not is_node_id("n1\x00")
    assert not is_node_id("n\u202e1") and is_token_name("ci@host:1/x") and not is_token_name("ci\n")


def test_a_config_file_named_with_a_newline_is_not_a_shard(tmp_path: Path):
    from xds_server.sources.config_dir import shard_of

    assert shard_of(tmp_path / "demo.yaml") == "demo"
    assert shard_of(tmp_path / "demo.yaml\n") is None


async def test_dgw_node_revoke_lists_and_reinstates(server: XdsServer):
    flags = ["--server", f"http://127.0.0.1:{server.admin_port}", "--token", admin_token(server)]
    code, out, err = await _dgw("node", "revoke", "n1", "--shard", "kv", "--reason", "stolen laptop", *flags)
    assert code == 0 and "revoked" in out, err
    code, out, _ = await _dgw("node", "revocations", *flags)
    assert code == 0 and "n1" in out and "stolen laptop" in out
    code, _, err = await _dgw("node", "revoke", "n9", *flags)
    assert code == 1 and "--shard" in err
    code, out, _ = await _dgw("node", "reinstate", "n1", "--shard", "kv", *flags)
    assert code == 0 and "reinstated" in out
    code, out, _ = await _dgw("node", "revocations", *flags)
    assert "no node is revoked" in out
    assert server.revocations is not None and server.revocations.list() == []


async def test_a_version_the_store_cannot_hold_is_a_400_not_a_500(server: XdsServer, api: Api):
    """Found by the admin API fuzzing: a rollback to 10**19 reached SQLite's 64-bit integers."""
    status, body = await api.call("POST", "/v1/shards/kv/rollback", admin_token(server),
                                  json={"to": 10**19}, headers={"If-Match": '"1"'})  # fmt: skip
    assert status == 400 and "version number" in body["error"]
