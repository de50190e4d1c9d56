"""Access control on the admin API: tokens, roles per route, refusals audited, the
first start's admin token."""

from __future__ import annotations

import logging
import stat

import aiohttp

from tests.support.server import admin_token
from xds_server.api.auth import ROUTE_ROLES, RefusalBudget, required
from xds_server.server import XdsServer

from .conftest import SHARD, Api, settings

READS = {"GET", "HEAD", "OPTIONS"}
PARAMS = {"shard": "kv", "token_id": "0123456789ab", "n": "1", "address": "kv.dgw", "node": "n1",
          "kind": "dals", "name": "kv", "rollout": "r1", "action": "pause"}


def mutating_routes(server: XdsServer) -> list[tuple[str, str, str]]:
    """(method, pattern, url path) of every route that is not a read, from the router."""
    assert server.admin_runner is not None
    routes = []
    for route in server.admin_runner.app.router.routes():
        resource = route.resource
        if route.method in READS or resource is None or route.method == "*":
            continue
        info = resource.get_info()
        params = {k: v for k, v in PARAMS.items() if "{" + k + "}" in resource.canonical}
        path = resource.url_for(**params).path if "formatter" in info else resource.canonical
        routes.append((route.method, resource.canonical, path))
    return routes


async def test_every_mutating_route_refuses_no_token_and_a_reader_and_audits_it(server: XdsServer, api: Api):
    reader = await api.token(admin_token(server), "reader", "reading-robot")
    routes = mutating_routes(server)
    assert {("POST", "/v1/reports"), ("POST", "/v1/tokens"), ("DELETE", "/v1/tokens/{token_id}")} <= {
        (m, p) for m, p, _ in routes
    }
    for method, _, path in routes:
        status, body = await api.call(method, path, None, json={"shard": "kv"}, headers={"If-Match": '"3"'})
        assert status == 401, (method, path, body)
        assert "Authorization: Bearer" in body["error"]
        status, body = await api.call(method, path, reader, json={"shard": "kv"})
        assert status == 403, (method, path, body)
        assert "reading-robot" in body["error"]
    assert server.store is not None
    entries = await server.store.audit_log(limit=1000)
    refused = [e for e in entries if not e.accepted]
    for method, pattern, _ in routes:
        mine = [e for e in refused if e.action == f"{method} {pattern}"]
        assert [e.reason[:3] for e in mine] == ["403", "401"], (method, pattern, mine)
        anonymous, robot = mine[1], mine[0]
        assert anonymous.actor == "anonymous" and robot.actor.startswith("reading-robot (")
        if "{shard}" in pattern:
            assert anonymous.shard == "kv" and anonymous.base_version == 3


async def test_reads_need_a_reader_token_and_healthz_none(server: XdsServer, api: Api):
    reader = await api.token(admin_token(server), "reader", "r")
    assert (await api.call("GET", "/healthz", None))[0] == 200
    for path in ("/v1/shards", "/v1/shards/kv", "/v1/nodes", "/v1/status", "/metrics", "/v1/discovery/x"):
        assert (await api.call("GET", path, None))[0] == 401, path
        assert (await api.call("GET", path, "dgw_0123456789ab_" + "x" * 43))[0] == 401, path
        assert (await api.call("GET", path, reader))[0] == 200, path
    for path in ("/v1/tokens", "/v1/audit"):
        assert (await api.call("GET", path, reader))[0] == 403, path


def test_a_route_missing_from_the_table_is_not_open():
    assert required("GET", "/v1/something-new") == "reader"
    assert required("POST", "/v1/something-new") == "admin"
    assert required("PATCH", None) == "admin"
    assert required("HEAD", "/healthz") == "open"
    assert [k for k, v in ROUTE_ROLES.items() if v == "open"] == [("GET", "/healthz")]


async def test_node_tokens_report_for_their_own_shard_only(server: XdsServer, api: Api):
    admin = admin_token(server)
    kv = await api.token(admin, "node", "host-1", shard="kv", one_time=False)
    other = await api.token(admin, "node", "host-2", shard="other", one_time=False)
    report = {"shard": "kv", "node_id": "n1", "endpoints": [
        {"dal": "kv", "listener": "api", "address": "127.0.0.1", "port": 18081, "health": "HEALTHY"}]}
    status, body = await api.call("POST", "/v1/reports", other, json=report)
    assert status == 403 and "own shard" in body["error"] and "'kv'" in body["error"]
    assert (await api.call("POST", "/v1/reports", kv, json=report))[0] == 200
    assert (await api.call("POST", "/v1/reports", kv, json={**report, "shard": "other"}))[0] == 403
    assert (await api.call("GET", "/v1/shards", kv))[0] == 403  # a node token reads nothing
    assert server.registry.shards["kv"].nodes.keys() == {"n1"}
    assert server.store is not None
    refused = [e for e in await server.store.audit_log(limit=10) if e.action == "POST /v1/reports"]
    assert [(e.actor.split(" ")[0], e.shard, e.accepted) for e in refused] == [
        ("host-1", "other", False), ("host-2", "kv", False)]


async def test_tokens_are_made_listed_revoked_and_audited(server: XdsServer, api: Api):
    admin = admin_token(server)
    status, made = await api.call("POST", "/v1/tokens", admin, json={"role": "operator", "name": "ci", "ttl_s": 3600})
    assert status == 200 and made["token"].startswith(f"dgw_{made['id']}_")
    status, listed = await api.call("GET", "/v1/tokens", admin)
    assert {t["name"] for t in listed["tokens"]} == {"admin", "ci"}
    assert made["token"] not in str(listed) and "sha256" not in str(listed)
    assert (await api.call("GET", "/v1/shards", made["token"]))[0] == 200
    assert (await api.call("DELETE", f"/v1/tokens/{made['id']}", admin))[0] == 200
    status, body = await api.call("GET", "/v1/shards", made["token"])
    assert status == 401 and "revoked" in body["error"]
    status, body = await api.call("POST", "/v1/tokens", admin, json={"role": "root", "name": "x"})
    assert status == 400 and "role must be one of" in body["error"]
    status, body = await api.call("POST", "/v1/tokens", admin, json={"role": "node", "name": "x"})
    assert status == 400 and "--shard" in body["error"]
    status, audit = await api.call("GET", "/v1/audit?limit=10", admin)
    actions = [(e["action"].split(" ")[0], e["accepted"]) for e in audit["entries"]]
    assert actions[:4] == [("token.create", False), ("token.create", False), ("token.revoke", True),
                           ("token.create", True)]
    assert all(e["actor"].startswith("admin (") for e in audit["entries"][:4])


async def test_one_time_tokens_work_once(server: XdsServer, api: Api):
    once = await api.token(admin_token(server), "reader", "once", one_time=True)
    assert (await api.call("GET", "/v1/shards", once))[0] == 200
    status, body = await api.call("GET", "/v1/shards", once)
    assert status == 401 and "one-time" in body["error"]


async def test_the_first_start_saves_an_admin_token_0600_and_logs_only_its_path(tmp_path, caplog):
    s = settings(tmp_path)
    (s.config_dir / "kv.yaml").write_text(SHARD)
    with caplog.at_level(logging.DEBUG):
        first = XdsServer(s)
        await first.start()
        await first.stop()
    token = first.admin_token_path.read_text().strip()
    assert first.admin_token_path == tmp_path / "data" / "admin.token"
    assert stat.S_IMODE(first.admin_token_path.stat().st_mode) == 0o600
    assert str(first.admin_token_path) in caplog.text
    assert token not in caplog.text and token.split("_", 2)[2] not in caplog.text
    second = XdsServer(s)
    await second.start()  # tokens exist: no new admin token
    try:
        assert second.admin_token_path.read_text().strip() == token
        assert second.tokens is not None and len(second.tokens.list()) == 1
    finally:
        await second.stop()


async def test_metrics_can_be_public(tmp_path):
    server = XdsServer(settings(tmp_path, metrics_public=True))
    await server.start()
    try:
        async with aiohttp.ClientSession() as http:
            api = Api(server, http)
            assert (await api.call("GET", "/metrics", None))[0] == 200
            assert (await api.call("GET", "/v1/status", None))[0] == 401
    finally:
        await server.stop()


def test_the_refusal_budget_itemizes_a_window_then_counts_the_rest():
    now = [0.0]
    budget = RefusalBudget(per_window=3, window_s=60, clock=lambda: now[0])
    assert [budget.take() for _ in range(5)] == [(True, 0)] * 3 + [(False, 0)] * 2
    now[0] = 61
    assert budget.take() == (True, 2)  # the two left out are reported once
    assert budget.take() == (True, 0)


async def test_a_flood_of_anonymous_mutations_cannot_grow_the_audit_log_past_its_budget(
    server: XdsServer, api: Api
):
    flood = RefusalBudget().per_window + 40
    for i in range(flood):
        status, _ = await api.call("PUT", f"/v1/shards/s{i}", None, json={"yaml": ""})
        assert status == 401
    assert server.store is not None
    entries = await server.store.audit_log(limit=1000)
    assert len([e for e in entries if not e.accepted]) == RefusalBudget().per_window
