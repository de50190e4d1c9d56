"""The migrations' admin routes on an in-process server: each step stored and wired
through the one change path, refusals as one line with nothing changed, two operators
starting at once (exactly one wins), the runner's If-Match, the audit log."""

from __future__ import annotations

import asyncio
import dataclasses
import json

import yaml

from tests.api.conftest import Api
from tests.migrate.support import KV as TWO
from tests.migrate.support import M

KV = TWO.replace("wiring:\n", "  echo: {container_listeners: {other: 18083}, api: echo.v1}\nwiring:\n")


async def wiring(api: Api) -> dict:
    status, body, _ = await api.call("GET", "/v1/shards/kv")
    assert status == 200
    return yaml.safe_load(body["yaml"]).get("wiring") or {}


async def version(api: Api) -> int:
    _, body, _ = await api.call("GET", "/v1/shards/kv")
    return int(body["version"])


async def test_a_whole_migration_through_the_api(api: Api) -> None:
    assert (await api.put("kv", KV, 0))[0] == 200
    status, m, _ = await api.call("POST", f"{M}/start", {"from": "thrift", "to": "cql"})
    assert status == 201, m
    assert (m["phase"], m["from"], m["to"], m["api"]) == ("shadowing", "thrift", "cql", "dgw.kv.v1")
    assert m["next"] == "next: copy the data: dgw migrate kv backfill"
    assert await wiring(api) == {"thrift": {"mode": "shadow", "target": "cql", "traffic": "writes"}}
    assert m["history"][-1]["version"] == await version(api) == 2

    # The runner's checkpoints, with If-Match; a stale one is refused and changes nothing.
    status, m, _ = await api.call("PUT", f"{M}/backfill", {"cursors": {"gw": "k1"}, "totals": {"items": 10}},
                                  m["version"])  # fmt: skip
    assert status == 200 and m["phase"] == "backfilling", m
    stale, answer, _ = await api.call("PUT", f"{M}/backfill", {"done": True}, m["version"] - 1)
    assert stale == 412 and "read it again" in answer["error"]
    status, answer, _ = await api.call("PUT", f"{M}/backfill", {"done": True})
    assert status == 428
    status, m, _ = await api.call("POST", f"{M}/throttle", {"items_per_s": 500})
    assert status == 200 and m["throttle"] == {"items_per_s": 500.0}
    status, m, _ = await api.call("PUT", f"{M}/backfill", {"done": True, "totals": {"items": 20, "bytes": 99}},
                                  m["version"])  # fmt: skip
    assert m["phase"] == "backfilled" and m["progress"]["items"] == 20
    status, m, _ = await api.call(
        "PUT", f"{M}/verify", {"differences": 0, "items": 20}, m["version"]
    )
    assert m["phase"] == "verified", m

    status, m, _ = await api.call("POST", f"{M}/promote", {})
    assert status == 200 and m["phase"] == "promoted"
    assert await wiring(api) == {"cql": {"mode": "shadow", "target": "thrift", "traffic": "writes"}}
    status, m, _ = await api.call("POST", f"{M}/finish")
    assert status == 200 and m["phase"] == "finished"
    _, shard, _ = await api.call("GET", "/v1/shards/kv")
    assert (
        "thrift" not in yaml.safe_load(shard["yaml"])["container_dals"] and await wiring(api) == {}
    )
    _, history, _ = await api.call("GET", "/v1/shards/kv/history")
    assert [v["message"].split(":")[0] for v in history["versions"][:3]] == [
        "migration finished",
        "migration promoted",
        "migration shadowing",
    ]
    entries = await api.server.store.audit_log(limit=50)
    actions = [e.action for e in entries if e.action.startswith("migration.") and e.accepted]
    # Steps, not the runner's checkpoints: a long backfill does not flood the audit log.
    assert actions == ["migration.finish", "migration.promote", "migration.verify", "migration.backfill",
                       "migration.throttle", "migration.backfill", "migration.start"]  # fmt: skip
    assert [e.reason[:3] for e in entries if e.action == "migration.backfill" and not e.accepted] == ["412"]


async def test_careless_steps_get_one_line_and_change_nothing(api: Api) -> None:
    assert (await api.put("kv", KV, 0))[0] == 200
    cases = [
        ("POST", f"{M}/promote", None, 404, "shard kv has no migration; start one"),
        (
            "POST",
            f"{M}/start",
            {"from": "thrift", "to": "nope"},
            404,
            "--to DAL 'nope' is not a DAL of shard kv",
        ),
        ("POST", f"{M}/start", {"from": "thrift", "to": "echo"}, 400, "serve different APIs"),
        (
            "POST",
            f"{M}/start",
            {"from": "cql", "to": "thrift"},
            409,
            "DAL 'thrift' is already wired (shadow to cql)",
        ),
        ("POST", f"{M}/start", {"from": "thrift"}, 400, '"to" must name a DAL'),
        ("POST", f"{M}/promote", {"steps": [10, 100], "interval_s": "5s"}, 400, "interval must be from 0.5s"),
        ("POST", f"{M}/promote", {"min_requests": 1.5}, 400, "min_requests must be a whole number from 0"),
        (
            "POST",
            "/v1/migrations/nope/start",
            {"from": "thrift", "to": "cql"},
            404,
            "no shard 'nope'",
        ),
    ]
    for method, path, body, status, words in cases:
        got, answer, _ = await api.call(method, path, body)
        assert got == status and words in answer["error"] and "\n" not in answer["error"], (
            path,
            answer,
        )
    assert await version(api) == 1
    assert (await api.call("POST", f"{M}/start", {"from": "thrift", "to": "cql"}))[0] == 201
    before = await version(api)
    for path, words in [
        (f"{M}/promote", "cannot promote: the migration of shard kv is shadowing; next: copy"),
        (f"{M}/finish", "cannot finish"),
        (f"{M}/start", "already migrating thrift → cql"),
    ]:
        got, answer, _ = await api.call(
            "POST", path, {"from": "thrift", "to": "cql"} if "start" in path else None
        )
        assert got == 409 and words in answer["error"], answer
    assert await version(api) == before
    # The runner (dgw migrate kv verify) is told before it compares anything.
    got, answer, _ = await api.call("GET", M, None)
    assert got == 200 and answer["runner_refusals"] == {
        "backfill": None,
        "verify": "cannot verify: the migration of shard kv is shadowing; next: copy the data: dgw migrate kv backfill",
    }
    refused = [e for e in await api.server.store.audit_log(limit=50) if e.action.startswith("migration.")
               and not e.accepted]  # fmt: skip
    assert len(refused) >= 7


async def test_two_operators_start_at_once_exactly_one_wins(api: Api) -> None:
    assert (await api.put("kv", KV, 0))[0] == 200
    answers = await asyncio.gather(*(api.call("POST", f"{M}/start", {"from": "thrift", "to": to})
                                     for to in ("cql",) * 4))  # fmt: skip
    statuses = sorted(a[0] for a in answers)
    assert statuses == [201, 409, 409, 409], answers
    winner = next(a[1] for a in answers if a[0] == 201)
    for status, body, _ in answers:
        if status == 409:
            assert "already migrating thrift" in body["error"]
    assert (
        winner["to"] == "cql"
        and len((await api.call("GET", "/v1/shards/kv/history"))[1]["versions"]) == 2
    )


async def test_rollback_after_promotion_and_a_file_owned_shard(api: Api) -> None:
    assert (await api.put("kv", KV, 0))[0] == 200
    _, m, _ = await api.call("POST", f"{M}/start", {"from": "thrift", "to": "cql"})
    _, m, _ = await api.call("PUT", f"{M}/backfill", {"done": True}, m["version"])
    _, m, _ = await api.call("PUT", f"{M}/verify", {"differences": 0}, m["version"])
    _, m, _ = await api.call("POST", f"{M}/promote")
    status, m, _ = await api.call("POST", f"{M}/rollback")
    assert status == 200 and m["phase"] == "verified"
    assert await wiring(api) == {"thrift": {"mode": "shadow", "target": "cql", "traffic": "writes"}}
    status, m, _ = await api.call("POST", f"{M}/rollback", {"abandon": True})
    assert m["phase"] == "rolled_back" and await wiring(api) == {
        "thrift": {"mode": "shadow", "target": "cql"}
    }
    # A new migration may start over a final one.
    status, m, _ = await api.call("POST", f"{M}/start", {"from": "thrift", "to": "cql"})
    assert status == 201 and m["phase"] == "shadowing"
    (api.server.settings.config_dir / "owned.yaml").write_text(KV)
    await api.server.config_dir.rescan()
    status, answer, _ = await api.call(
        "POST", "/v1/migrations/owned/start", {"from": "thrift", "to": "cql"}
    )
    assert status == 409 and "owned by file" in answer["error"] and "which decides its wiring" in answer["error"]


async def test_a_record_ahead_of_the_wiring_is_wired_by_the_loop(api: Api) -> None:
    """A server killed between storing a step and wiring it: the loop wires it, once."""
    assert (await api.put("kv", KV, 0))[0] == 200
    assert (await api.call("POST", f"{M}/start", {"from": "thrift", "to": "cql"}))[0] == 201
    engine = api.server.migrations
    assert engine is not None
    stored = await engine.get("kv")
    assert stored is not None
    ahead = dataclasses.replace(stored, phase="promoted")
    await api.server.store.put_record("migration", "kv", json.dumps(ahead.to_json()), base_version=stored.record_version)
    await engine.tick()
    assert await wiring(api) == {"cql": {"mode": "shadow", "target": "thrift", "traffic": "writes"}}
    wired = await version(api)
    await engine.tick()
    assert await version(api) == wired  # acting again changes nothing
