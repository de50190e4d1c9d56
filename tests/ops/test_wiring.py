"""Wiring operations: pure functions on the shard's text, table-tested. The result
keeps the user's comments, key order and ``${VAR}`` references, and means (PyYAML,
the loader) exactly the wiring asked for."""

from __future__ import annotations

import re

import pytest
import yaml

from testkit.procs import ROOT
from xds_server.config import load_shard_text
from xds_server.ops.wiring import (
    Clear,
    Promote,
    Retire,
    Shadow,
    Split,
    WiringError,
    apply,
    parse_op,
)

BASE = """\
# yaml-language-server: $schema=../schema/shard.schema.json
proxy_config:
  public_listeners:
    api: {mode: http, path: ${DGW_PORT:-8080}}  # the public port

container_dals:
  thrift:
    container_listeners: {api: 8081}
    env:
      HEALTH: "$${DGW_LISTENER_API_PORT}"
  cql: {container_listeners: {api: 8082}}
  spare: {container_listeners: {api: 8083}}

# migration: thrift → cql
wiring:
  thrift: {mode: shadow, target: cql}

registrations:
  - address: kv.discovery
"""


def wiring_of(text: str) -> dict:
    return yaml.safe_load(re.sub(r"\$\{[^}]*\}", "0", text)).get("wiring", {})


@pytest.mark.parametrize(("op", "wiring"), [
    (Shadow("thrift", "cql"), {"thrift": {"mode": "shadow", "target": "cql"}}),
    (Shadow("thrift", "cql", 25), {"thrift": {"mode": "shadow", "target": "cql", "percent": 25}}),
    (Split("thrift", "cql", 10), {"thrift": {"mode": "split", "target": "cql", "percent": 10}}),
    (Split("thrift", "cql", 12.5), {"thrift": {"mode": "split", "target": "cql", "percent": 12.5}}),
    (Promote("cql"), {"cql": {"mode": "shadow", "target": "thrift"}}),
    (Clear("thrift"), {}),
    (Shadow("cql", "spare"), {"thrift": {"mode": "shadow", "target": "cql"},
                              "cql": {"mode": "shadow", "target": "spare"}}),
])  # fmt: skip
def test_each_operation_means_the_wiring_asked_for(op, wiring) -> None:
    assert wiring_of(apply(BASE, op)) == wiring


def test_everything_but_the_wiring_is_kept_as_written() -> None:
    out = apply(BASE, Split("thrift", "cql", 10))
    assert out == BASE.replace("thrift: {mode: shadow, target: cql}",
                               "thrift: {mode: split, target: cql, percent: 10}")  # fmt: skip


def test_promote_then_the_result_is_a_valid_config_with_the_new_primary() -> None:
    out = apply(BASE.replace("  spare: {container_listeners: {api: 8083}}\n", ""), Promote("cql"))
    config = load_shard_text(out, "kv.yaml", env={})
    assert {k: (w.mode, w.target) for k, w in config.wiring.items()} == {"cql": ("shadow", "thrift")}
    assert "# migration: thrift → cql" in out and "${DGW_PORT:-8080}" in out


def test_a_config_without_wiring_gets_one_and_clearing_the_last_removes_the_key() -> None:
    bare = BASE.split("# migration")[0]
    added = apply(bare, Shadow("thrift", "cql"))
    assert wiring_of(added) == {"thrift": {"mode": "shadow", "target": "cql"}}
    assert "wiring" not in apply(added, Clear("thrift"))


@pytest.mark.parametrize(("op", "message"), [
    (Shadow("thrift", "nope"), "target DAL 'nope' is not a DAL of this shard; its DALs: cql, spare, thrift"),
    (Split("nope", "cql", 5), "source DAL 'nope' is not a DAL of this shard; its DALs: cql, spare, thrift"),
    (Shadow("cql", "cql"), "DAL 'cql' cannot be wired to itself"),
    (Split("thrift", "cql", 150), "percent 150 must be between 0 and 100"),
    (Promote("spare"), "DAL 'spare' is not the target of any wiring, so there is no primary to take over from; wirings: thrift → cql"),
    (Promote("nope"), "target DAL 'nope' is not a DAL of this shard"),
    (Clear("cql"), "DAL 'cql' has no wiring to clear; wired sources: thrift"),
])  # fmt: skip
def test_errors_name_the_dal_and_what_exists(op, message) -> None:
    with pytest.raises(WiringError, match=re.escape(message)):
        apply(BASE, op)


def test_promote_refuses_when_the_target_wires_elsewhere() -> None:
    chained = BASE.replace("  thrift: {mode: shadow, target: cql}\n",
                           "  thrift: {mode: shadow, target: cql}\n  cql: {mode: split, target: spare, percent: 5}\n")  # fmt: skip
    with pytest.raises(WiringError, match="DAL 'cql' already wires its own traffic to 'spare'; clear 'cql' first"):
        apply(chained, Promote("cql"))


@pytest.mark.parametrize(("body", "op"), [
    ({"op": "shadow", "source": "a", "target": "b"}, Shadow("a", "b")),
    ({"op": "shadow", "source": "a", "target": "b", "percent": 5}, Shadow("a", "b", 5)),
    ({"op": "split", "source": "a", "target": "b", "percent": 50}, Split("a", "b", 50)),
    ({"op": "promote", "target": "b"}, Promote("b")),
    ({"op": "clear", "source": "a"}, Clear("a")),
])  # fmt: skip
def test_parse_op(body, op) -> None:
    assert parse_op(body) == op


@pytest.mark.parametrize(("body", "message"), [
    ({"op": "move"}, "op 'move' is not one of: shadow, split, promote, clear"),
    ({"op": "split", "source": "a", "target": "b"}, "op 'split' needs 'percent'"),
    ({"op": "promote"}, "op 'promote' needs 'target'"),
    ({"op": "shadow", "source": "a", "target": "b", "percent": "x"}, "percent must be a number"),
])  # fmt: skip
def test_parse_op_errors(body, message) -> None:
    with pytest.raises(WiringError, match=re.escape(message)):
        parse_op(body)


def test_text_that_is_not_yaml_is_an_error_not_a_trace() -> None:
    with pytest.raises(WiringError, match="not valid YAML"):
        apply("proxy_config: [\n", Clear("x"))


def test_nested_sequences_and_escaped_variables_are_written_back_as_they_were() -> None:
    text = BASE.replace(
        "      HEALTH: \"$${DGW_LISTENER_API_PORT}\"\n",
        "      HEALTH: \"$${DGW_LISTENER_API_PORT}\"\n    healthcheck:\n      test:\n        - CMD\n        - probe $$PORT\n",
    )
    assert apply(text, Clear("thrift")).startswith(text.split("# migration")[0])


def test_the_demo_shard_changes_on_its_wiring_line_only() -> None:
    demo = (ROOT / "deploy" / "demo" / "shards" / "demo.yaml").read_text()
    out = apply(demo, Split("thrift", "cql", 25))
    assert out == demo.replace("thrift: {mode: shadow, target: cql}", "thrift: {mode: split, target: cql, percent: 25}")


def test_retire_removes_the_dal_and_every_wiring_naming_it() -> None:
    promoted = apply(BASE.replace("  spare: {container_listeners: {api: 8083}}\n", ""), Promote("cql", "writes"))
    assert wiring_of(promoted)["cql"] == {"mode": "shadow", "target": "thrift", "traffic": "writes"}
    retired = apply(promoted, Retire("thrift"))
    config = load_shard_text(retired, "kv.yaml", env={})
    assert "thrift" not in config.container_dals and config.wiring == {}
    assert wiring_of(apply(BASE, Shadow("thrift", "cql", None, "writes", 10)))["thrift"] == {
        "mode": "shadow", "target": "cql", "traffic": "writes", "read_percent": 10}
