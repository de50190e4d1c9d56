"""The dry run's diffs: pure functions over two texts and two translations."""

from __future__ import annotations

from xds_server.config import load_shard_text
from xds_server.ops.diff import ResourceRef, config_diff, resource_diff
from xds_server.resources import Resources
from xds_server.translate import translate

ONE = """\
proxy_config:
  public_listeners:
    api: {mode: http, path: 18080}
container_dals:
  thrift: {container_listeners: {api: 18081}}
  cql: {container_listeners: {api: 18082}}
wiring:
  thrift: {mode: shadow, target: cql}
"""


def resources(text: str) -> Resources:
    return translate(load_shard_text(text, "kv.yaml", env={}).runtime())


def test_config_diff_is_a_unified_diff_of_the_text() -> None:
    diff = config_diff(ONE, ONE.replace("shadow", "split").replace("cql}", "cql, percent: 5}"), "kv")
    assert diff.startswith("--- a/kv.yaml\n+++ b/kv.yaml\n")
    assert "-  thrift: {mode: shadow, target: cql}\n+  thrift: {mode: split, target: cql, percent: 5}\n" in diff
    assert config_diff(ONE, ONE, "kv") == ""


def test_a_wiring_change_changes_the_route_only() -> None:
    diff = resource_diff(resources(ONE), resources(ONE.replace("shadow, target: cql", "split, target: cql, percent: 5")))
    assert diff.added == () and diff.removed == ()
    assert [(c.type, c.name) for c in diff.changed] == [("routes", "route.api")]
    assert "request_mirror_policies" in diff.changed[0].diff and diff.changed[0].diff.startswith("--- a/routes/route.api")


def test_added_and_removed_resources_are_named_by_type() -> None:
    more = ONE.replace("    api: {mode: http, path: 18080}\n",
                       "    api: {mode: http, path: 18080}\n    db: {mode: tcp, path: 15432}\n")
    more = more.replace("thrift: {container_listeners: {api: 18081}}", "thrift: {container_listeners: {api: 18081, db: 15433}}")
    diff = resource_diff(resources(ONE), resources(more))
    assert ResourceRef("listeners", "public.db") in diff.added
    assert ResourceRef("clusters", "dal.thrift.db") in diff.added
    assert diff.removed == ()
    back = resource_diff(resources(more), resources(ONE))
    assert set(back.removed) == set(diff.added) and back.added == ()
    assert resource_diff(resources(ONE), Resources()).to_dict()["removed"][0]["type"] == "clusters"


def test_a_policy_change_shows_in_the_route_and_cluster_diffs() -> None:
    def full(text: str) -> Resources:
        return translate(load_shard_text(text, "kv.yaml", env={}))

    edited = ONE + "resilience: {timeout: 750ms, retries: {per_try_timeout: 200ms}, circuit_breakers: {max_requests: 64}}\n"
    diff = resource_diff(full(ONE), full(edited))
    changed = {(c.type, c.name): c.diff for c in diff.changed}
    assert set(changed) == {("routes", "route.api"), ("clusters", "dal.thrift.api"), ("clusters", "dal.cql.api")}
    assert "+      timeout: 0.750s" in changed[("routes", "route.api")]
    assert "+    max_requests: 64" in changed[("clusters", "dal.thrift.api")]
    # The service tier is a policy too: its defaults change with it.
    tier0 = resource_diff(full(ONE), full(ONE + "deploy_desires: {service_tier: 0}\n"))
    assert ("listeners", "public.api") in {(c.type, c.name) for c in tier0.changed}  # adaptive concurrency
