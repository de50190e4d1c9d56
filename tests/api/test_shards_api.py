"""The operators' shard routes against a real in-process server on loopback: the
config store behind them, If-Match, dry run, history, rollback, ownership, audit."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest

from testkit.ads_client import XdsClient
from testkit.wait import eventually
from xds_server.resources import CLUSTER, LISTENER
from xds_server.server import DataDirError, XdsServer

from .conftest import TWO_DALS, Api, admin_session, settings

SPLIT = TWO_DALS.replace("thrift: {mode: shadow, target: cql}", "thrift: {mode: split, target: cql, percent: 10}")


async def test_create_read_and_update_with_if_match(api: Api) -> None:
    assert await api.put("kv", TWO_DALS, 0) == (200, {"shard": "kv", "version": 1, "previous_version": None,
                                                      "unchanged": False})
    status, shard, headers = await api.call("GET", "/v1/shards/kv")
    assert status == 200 and headers["ETag"] == '"1"'
    assert shard["yaml"] == TWO_DALS and shard["owner"] == "api" and shard["version"] == 1
    assert shard["source_missing"] is False and shard["config_version"]
    assert await api.put("kv", SPLIT, 1) == (200, {"shard": "kv", "version": 2, "previous_version": 1,
                                                   "unchanged": False})
    listed = (await api.call("GET", "/v1/shards"))[1]["shards"]
    assert [(s["shard"], s["version"], s["owner"]) for s in listed] == [("kv", 2, "api")]


async def test_if_match_missing_stale_or_malformed_is_refused_and_nothing_is_stored(api: Api) -> None:
    await api.put("kv", TWO_DALS, 0)
    status, body = await api.put("kv", SPLIT, None)
    assert status == 428 and body["current_version"] == 1
    status, body = await api.put("kv", SPLIT, 0)
    assert status == 409 and body["current_version"] == 1
    async with api.session.put(f"{api.base}/v1/shards/kv", json={"yaml": SPLIT}, headers={"If-Match": "latest"}) as r:
        assert r.status == 400 and "If-Match 'latest'" in (await r.json())["error"]
    history = (await api.call("GET", "/v1/shards/kv/history"))[1]
    assert [v["version"] for v in history["versions"]] == [1]


async def test_two_conflicting_edits_from_one_base_exactly_one_wins(api: Api) -> None:
    await api.put("kv", TWO_DALS, 0)
    edits = [SPLIT, SPLIT.replace("percent: 10", "percent: 20")]
    results = await asyncio.gather(*(api.put("kv", text, 1) for text in edits))
    assert sorted(status for status, _ in results) == [200, 409]
    (loser,) = [body for status, body in results if status == 409]
    assert loser["current_version"] == 2
    (winner,) = [i for i, (status, _) in enumerate(results) if status == 200]
    assert (await api.call("GET", "/v1/shards/kv"))[1]["yaml"] == edits[winner]


async def test_an_invalid_config_is_400_with_problems_and_the_running_config_stays(api: Api) -> None:
    await api.put("kv", TWO_DALS, 0)
    served = api.server.registry.shards["kv"].config_version
    bad = TWO_DALS.replace("target: cql", "target: nope")
    status, body = await api.put("kv", bad, 1)
    assert status == 400
    assert body["problems"] and all({"path", "message"} == set(p) for p in body["problems"])
    assert any("nope" in p["message"] for p in body["problems"])
    assert api.server.registry.shards["kv"].config_version == served
    assert (await api.call("GET", "/v1/shards/kv"))[1]["version"] == 1


async def test_dry_run_shows_both_diffs_and_stores_nothing(api: Api) -> None:
    await api.put("kv", TWO_DALS, 0)
    status, body = await api.put("kv", SPLIT, 1, dry_run="true")
    assert status == 200 and body["dry_run"] is True
    assert "+  thrift: {mode: split, target: cql, percent: 10}" in body["config_diff"]
    assert [(c["type"], c["name"]) for c in body["resources"]["changed"]] == [("routes", "route.api")]
    assert body["resources"]["added"] == [] and body["resources"]["removed"] == []
    assert (await api.call("GET", "/v1/shards/kv"))[1]["version"] == 1
    status, body, _ = await api.call("POST", "/v1/shards/kv/wiring?dry_run=true", {"op": "promote", "target": "cql"}, 1)
    assert status == 200 and "+  cql: {mode: shadow, target: thrift}" in body["config_diff"]
    await api.put("kv", SPLIT, 1)
    status, body, _ = await api.call("POST", "/v1/shards/kv/rollback?dry_run=true", {"to": 1}, 2)
    assert status == 200 and "-  thrift: {mode: split, target: cql, percent: 10}" in body["config_diff"]
    assert (await api.call("GET", "/v1/shards/kv"))[1]["version"] == 2
    status, body, _ = await api.call("DELETE", "/v1/shards/kv?dry_run=true", None, 2)
    assert status == 200 and {r["type"] for r in body["resources"]["removed"]} >= {"clusters", "listeners"}
    assert (await api.call("GET", "/v1/shards/kv"))[0] == 200


async def test_wiring_operations_store_new_versions_keeping_comments(api: Api) -> None:
    await api.put("kv", TWO_DALS, 0)
    status, body, _ = await api.call("POST", "/v1/shards/kv/wiring", {"op": "promote", "target": "cql"}, 1)
    assert (status, body["version"]) == (200, 2)
    text = (await api.call("GET", "/v1/shards/kv"))[1]["yaml"]
    assert "cql: {mode: shadow, target: thrift}" in text and "# the public port" in text
    status, body, _ = await api.call("POST", "/v1/shards/kv/wiring",
                                     {"op": "split", "source": "cql", "target": "thrift", "percent": 30}, 2)
    assert status == 200
    status, body, _ = await api.call("POST", "/v1/shards/kv/wiring", {"op": "shadow", "source": "x", "target": "cql"}, 3)
    assert status == 400 and "source DAL 'x' is not a DAL of this shard; its DALs: cql, thrift" in body["problems"][0]["message"]
    history = (await api.call("GET", "/v1/shards/kv/history"))[1]["versions"]
    assert [v["message"] for v in history] == ["split 30% of cql → thrift", "promote cql", "t"]


async def test_history_pages_versions_and_rollback(api: Api) -> None:
    await api.put("kv", TWO_DALS, 0)
    for n in range(1, 5):
        await api.put("kv", SPLIT.replace("percent: 10", f"percent: {n}"), n)
    page = (await api.call("GET", "/v1/shards/kv/history?limit=2"))[1]
    assert [v["version"] for v in page["versions"]] == [5, 4] and page["next_before"] == 4
    page = (await api.call("GET", "/v1/shards/kv/history?limit=2&before=2"))[1]
    assert [v["version"] for v in page["versions"]] == [1] and page["next_before"] is None
    assert (await api.call("GET", "/v1/shards/kv/history?limit=0"))[0] == 400
    status, one, _ = await api.call("GET", "/v1/shards/kv/versions/1")
    assert status == 200 and one["yaml"] == TWO_DALS and one["source"] == "api"
    assert (await api.call("GET", "/v1/shards/kv/versions/99"))[0] == 404
    status, body, _ = await api.call("POST", "/v1/shards/kv/rollback", {"to": 1}, 5)
    assert (status, body["version"], body["previous_version"]) == (200, 6, 5)
    head = (await api.call("GET", "/v1/shards/kv/history?limit=1"))[1]["versions"][0]
    assert head["source"] == "rollback" and head["message"] == "rollback to version 1"
    assert (await api.call("GET", "/v1/shards/kv"))[1]["yaml"] == TWO_DALS
    assert (await api.call("POST", "/v1/shards/kv/rollback", {"to": 42}, 6))[0] == 404
    assert (await api.call("GET", "/v1/shards/nope/history"))[0] == 404


async def test_every_mutation_and_refusal_is_audited(api: Api) -> None:
    await api.put("kv", TWO_DALS, 0)
    await api.put("kv", SPLIT, 0)
    await api.put("kv", SPLIT, 1, dry_run="true")
    entries = await api.server.store.audit_log()
    token_id = api.server.admin_token_path.read_text().strip().split("_")[1]
    ACTOR = f"admin ({token_id})"  # the first start's admin token, by name and id
    assert [(e.action, e.accepted, e.actor, e.base_version, e.new_version) for e in entries] == [
        ("put", False, ACTOR, 0, None), ("put", True, ACTOR, 0, 1),
    ]
    assert entries[0].reason.startswith("409 ")


async def test_a_file_owned_shard_refuses_api_changes_and_keeps_serving_without_its_file(api: Api) -> None:
    server = api.server
    path = server.config_dir.directory / "kv.yaml"
    path.write_text(TWO_DALS)
    await eventually(lambda: "kv" in server.changes.heads, 10, what="the file stored")
    shard = (await api.call("GET", "/v1/shards/kv"))[1]
    assert (shard["owner"], shard["file"], shard["version_source"]) == ("file", str(path), "file")
    assert shard["author"] == f"file:{path}"
    for if_match in (1, None, 7):  # ownership first: no version makes the change possible
        status, body = await api.put("kv", SPLIT, if_match)
        assert status == 409 and body["file"] == str(path) and f"owned by file {path}" in body["error"]
    assert (await api.call("DELETE", "/v1/shards/kv", None, 1))[0] == 409
    served = server.registry.shards["kv"].config_version
    path.unlink()
    await eventually(lambda: "kv" in server.changes.missing, 10, what="the file's absence noticed")
    shard = (await api.call("GET", "/v1/shards/kv"))[1]
    assert shard["source_missing"] is True and shard["config_version"] == served
    assert server.cache.shard_versions("kv")
    # With its file gone, the shard may be deleted, then re-created through the API.
    assert (await api.call("DELETE", "/v1/shards/kv", None, 1))[0] == 200
    assert (await api.call("GET", "/v1/shards/kv"))[0] == 404
    assert await api.put("kv", SPLIT, 0) == (200, {"shard": "kv", "version": 3, "previous_version": None,
                                                   "unchanged": False})


async def test_a_file_for_an_api_owned_shard_is_refused(api: Api) -> None:
    await api.put("kv", TWO_DALS, 0)
    (api.server.config_dir.directory / "kv.yaml").write_text(SPLIT)
    registry = api.server.registry
    await eventually(lambda: "kv" in registry.rejections, 10, what="the file refused")
    assert "owned by the API" in registry.rejections["kv"].errors[0]
    assert (await api.call("GET", "/v1/shards/kv"))[1]["yaml"] == TWO_DALS


async def test_delete_refuses_while_envoys_are_connected_unless_forced(api: Api) -> None:
    await api.put("kv", TWO_DALS, 0)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{api.server.xds_port}") as channel:
        client = XdsClient(channel, "n1", "kv")
        await client.start()
        try:
            await client.wait_for(lambda c: bool(c.version(CLUSTER)), 10)
            status, body, _ = await api.call("DELETE", "/v1/shards/kv", None, 1)
            assert status == 409 and body["nodes"] == ["n1"] and "?force=true" in body["error"]
            status, body, _ = await api.call("DELETE", "/v1/shards/kv?force=true", None, 1)
            assert (status, body["version"]) == (200, 2)
            # The cache keeps what connected Envoys hold (it never pushes "nothing"),
            # but the shard is gone from the store and the registry.
            assert api.server.cache.shard_versions("kv") == {}
            assert "kv" not in api.server.registry.shards and client.types[LISTENER].resources
        finally:
            await client.stop()


async def test_after_a_restart_the_same_versions_are_served(tmp_path: Path) -> None:
    first = XdsServer(settings(tmp_path))
    await first.start()
    try:
        async with admin_session(first) as session:
            api = Api(first, session)
            await api.put("kv", TWO_DALS, 0)
            await api.put("kv", SPLIT, 1)
        versions = first.cache.shard_versions("kv")
    finally:
        await first.stop()
    second = XdsServer(settings(tmp_path))
    await second.start()
    try:
        assert second.cache.shard_versions("kv") == versions
        assert second.changes.heads["kv"].number == 2
    finally:
        await second.stop()


async def test_files_changed_or_removed_while_the_server_was_down(tmp_path: Path) -> None:
    s = settings(tmp_path)
    path = s.config_dir / "kv.yaml"
    path.write_text(TWO_DALS)
    first = XdsServer(s)
    await first.start()
    await first.stop()
    path.write_text(SPLIT)  # changed while down: a new version at start
    second = XdsServer(s)
    await second.start()
    try:
        head = second.changes.heads["kv"]
        assert (head.number, head.source, head.author) == (2, "file", f"file:{path}")
    finally:
        await second.stop()
    path.unlink()  # removed while down: still served, its source missing
    third = XdsServer(s)
    await third.start()
    try:
        assert "kv" in third.changes.missing and third.registry.shards["kv"].config_yaml
        assert third.changes.heads["kv"].number == 2
    finally:
        await third.stop()


async def test_numbers_out_of_range_are_400_not_500(api: Api) -> None:
    await api.put("kv", TWO_DALS, 0)
    for path in ("/v1/shards/kv/versions/99999999999999999999", "/v1/shards/kv/versions/x",
                 "/v1/shards/kv/history?before=99999999999999999999", "/v1/shards/kv/history?limit=1001"):
        status, body, _ = await api.call("GET", path)
        assert status == 400 and "is not allowed" in body["error"], path


async def test_a_second_server_on_the_same_data_dir_fails_in_one_line(server: XdsServer, tmp_path: Path) -> None:
    second = XdsServer(settings(tmp_path))
    with pytest.raises(DataDirError, match=r"^the data directory .* is in use by another process \(pid \d+\)"):
        await second.start()


async def test_a_batch_stores_every_shard_or_none(api: Api) -> None:
    assert (await api.put("a", TWO_DALS, 0))[0] == 200
    changes = [{"shard": "a", "yaml": SPLIT, "base_version": 1},
               {"shard": "b", "yaml": TWO_DALS, "base_version": 0}]
    status, body, _ = await api.call("POST", "/v1/batch?dry_run=true", {"changes": changes})
    assert status == 200 and set(body["shards"]) == {"a", "b"}
    assert "percent: 10" in body["shards"]["a"]["config_diff"]
    assert "b" not in api.server.registry.shards  # a dry run stores and serves nothing

    bad = [{"shard": "a", "yaml": SPLIT, "base_version": 1},
           {"shard": "b", "yaml": TWO_DALS.replace("target: cql", "target: nowhere"), "base_version": 0}]
    status, body, _ = await api.call("POST", "/v1/batch", {"changes": bad, "message": "fleet"})
    assert status == 400 and list(body["shards"]) == ["b"] and body["shards"]["b"]["problems"]
    stale = [{"shard": "a", "yaml": SPLIT, "base_version": 7}, changes[1]]
    status, body, _ = await api.call("POST", "/v1/batch", {"changes": stale})
    assert status == 409 and body["shards"]["a"]["current_version"] == 1
    assert api.server.changes.heads["a"].number == 1 and "b" not in api.server.changes.heads

    status, body, _ = await api.call("POST", "/v1/batch", {"changes": changes, "message": "fleet"})
    assert status == 200, body
    assert body["shards"] == {"a": {"version": 2, "previous_version": 1, "unchanged": False},
                              "b": {"version": 1, "previous_version": None, "unchanged": False}}
    assert {"a", "b"} <= set(api.server.registry.shards)
    entries = await api.server.store.audit_log(limit=100)
    assert {(e.shard, e.accepted) for e in entries if e.action == "batch.put"} == {
        ("b", False), ("a", False), ("a", True), ("b", True)}


async def test_a_change_to_what_the_shard_holds_makes_no_new_version(api: Api) -> None:
    """As ``kubectl apply``'s "unchanged": the same text, a wiring the shard already has,
    a rollback to the current content, a batch item that changes nothing."""
    await api.put("kv", TWO_DALS, 0)
    assert await api.put("kv", TWO_DALS, 1) == (200, {"shard": "kv", "version": 1, "previous_version": 1,
                                                      "unchanged": True})
    status, body, _ = await api.call("POST", "/v1/shards/kv/wiring",
                                     {"op": "shadow", "source": "thrift", "target": "cql"}, 1)  # fmt: skip
    assert status == 200 and body["unchanged"] is True and body["version"] == 1
    await api.put("kv", SPLIT, 1)
    await api.put("kv", TWO_DALS, 2)
    status, body, _ = await api.call("POST", "/v1/shards/kv/rollback", {"to": 1}, 3)
    assert status == 200 and body["unchanged"] is True and body["version"] == 3
    history = (await api.call("GET", "/v1/shards/kv/history"))[1]
    assert [v["version"] for v in history["versions"]] == [3, 2, 1]

    changes = [{"shard": "kv", "yaml": TWO_DALS, "base_version": 3},
               {"shard": "other", "yaml": TWO_DALS, "base_version": 0}]  # fmt: skip
    status, body, _ = await api.call("POST", "/v1/batch", {"changes": changes})
    assert status == 200 and body["shards"] == {
        "kv": {"version": 3, "previous_version": 3, "unchanged": True},
        "other": {"version": 1, "previous_version": None, "unchanged": False}}  # fmt: skip
    status, body, _ = await api.call("POST", "/v1/batch", {"changes": [changes[0]]})
    assert status == 200 and body["shards"]["kv"]["unchanged"] is True
    assert (await api.call("GET", "/v1/shards/kv"))[1]["version"] == 3
