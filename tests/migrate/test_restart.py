"""``kill -9`` of the ``dgw server`` in each phase of a migration: after a restart the
migration is as it was (phase, checkpoint, report, promotion step), the shard's wiring
is the phase's, and a progressive promotion goes on from its step."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from testkit.wait import wait_until
from tests.migrate.support import KV, WRITES, M
from tests.support.gateway import XdsServerProcess

pytestmark = pytest.mark.slow


def wiring(server: XdsServerProcess) -> dict:
    return yaml.safe_load(server.get("/v1/shards/kv")["yaml"]).get("wiring") or {}


def restarted(server: XdsServerProcess, before: dict) -> dict:
    """kill -9, start again: the migration is what it was."""
    assert server.child is not None
    server.child.kill()
    server.start()
    status, after = server.call("GET", M)
    assert status == 200
    for key in ("phase", "version", "backfill", "verify", "throttle", "promotion", "history", "from", "to"):
        assert after[key] == before[key], key
    return after


def test_kill_9_in_each_phase_keeps_the_migration(tmp_path: Path) -> None:
    server = XdsServerProcess(tmp_path).start()
    try:
        assert server.call("PUT", "/v1/shards/kv", {"yaml": KV}, 0)[0] == 200
        server.report("kv", "gw-1", [{"dal": d, "listener": "grpc", "address": "127.0.0.1", "port": p,
                                      "health": "HEALTHY"} for d, p in (("thrift", 18081), ("cql", 18082))])  # fmt: skip
        status, m = server.call("POST", f"{M}/start", {"from": "thrift", "to": "cql"})
        assert status == 201
        assert m["endpoints"] == {"from": ["127.0.0.1:18081"], "to": ["127.0.0.1:18082"]}
        m = restarted(server, m)
        assert wiring(server) == {"thrift": WRITES}

        status, m = server.call("PUT", f"{M}/backfill", {"namespaces": {"gw": {"cursor": "YQ=="}},
                                                         "totals": {"items": 7, "source_items": 14}}, m["version"])  # fmt: skip
        assert m["phase"] == "backfilling" and m["progress"]["percent"] == 50
        m = restarted(server, m)
        status, m = server.call("POST", f"{M}/throttle", {"items_per_s": 100})
        status, m = server.call("PUT", f"{M}/backfill", {"done": True, "totals": {"items": 14}}, m["version"])
        m = restarted(server, m)
        assert m["phase"] == "backfilled"
        status, m = server.call("PUT", f"{M}/verify", {"differences": 0, "fixed": 0, "done": True}, m["version"])
        m = restarted(server, m)
        assert m["phase"] == "verified" and wiring(server) == {"thrift": WRITES}

        # A promotion whose step is held long: its step and interval survive the restart.
        status, m = server.call("POST", f"{M}/promote", {"steps": [5, 100], "interval_s": 3600})
        assert status == 200 and m["phase"] == "promoting"
        wait_until(lambda: server.call("GET", M)[1]["promotion"]["applied_at"] is not None, 10,
                   what="the first step served")  # fmt: skip
        m = restarted(server, server.call("GET", M)[1])
        assert m["promotion"]["index"] == 0 and wiring(server) == {"thrift": {**WRITES, "read_percent": 5}}

        status, m = server.call("POST", f"{M}/rollback")
        assert m["phase"] == "verified"
        status, m = server.call("POST", f"{M}/promote")
        m = restarted(server, m)
        assert m["phase"] == "promoted"
        assert wiring(server) == {"cql": {"mode": "shadow", "target": "thrift", "traffic": "writes"}}
        status, m = server.call("POST", f"{M}/finish")
        m = restarted(server, m)
        assert m["phase"] == "finished" and wiring(server) == {}
        assert list(yaml.safe_load(server.get("/v1/shards/kv")["yaml"])["container_dals"]) == ["cql"]
    finally:
        server.stop()
