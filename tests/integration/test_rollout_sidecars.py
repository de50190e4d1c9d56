"""Acceptance of phased rollouts with the real parts: a ``dgw server``, one real
sidecar (process runtime, its own Envoy) per shard of tiers 0-3, ``dgw rollout``.

A rollout runs in tier order (3 first, 0 last); one whose wave introduces a DAL that
fails its health check halts there, rolls that wave back by itself and never reaches
tiers 1 and 0. The order is read from the audit log."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from tests.cli.run import dgw
from tests.support.gateway import XdsServerProcess
from tests.support.procs import Child, free_port, wait_for

pytestmark = [pytest.mark.envoy, pytest.mark.slow]

TIERS = {"ro-t0": 0, "ro-t1": 1, "ro-t2": 2, "ro-t3": 3}
REGION = {0: "us-east-1", 1: "us-east-1", 2: "eu-west-1", 3: "us-west-2"}
PY = sys.executable


def shard_text(tier: int, port: int, env: str, broken: bool = False) -> str:
    probe = "http://127.0.0.1:$${DGW_LISTENER_API_PORT}/health"
    text = f"""\
proxy_config:
  public_listeners:
    api: {{mode: http, path: {port}}}
container_dals:
  kv:
    container_cmd: [{PY}, -m, dals.sample]
    container_listeners: {{api: 8080}}
    env: {{RELEASE: "{env}"}}
    healthcheck: {{test: [CMD-SHELL, "{PY} -m dals.sample.probe {probe}"], interval: 300ms, timeout: 2s, retries: 2,
                  start_period: 20s}}
"""
    if broken:  # a new DAL whose health check never passes
        text += f"""\
  broken:
    container_cmd: [{PY}, -m, dals.sample]
    container_listeners: {{side: 8090}}
    healthcheck: {{test: [CMD, "false"], interval: 300ms, timeout: 1s, retries: 1}}
"""
    return text + f"""\
deploy_desires:
  service_tier: {tier}
  locations: [{{account: prod, regions: [{REGION[tier]}]}}]
  owners: [{{type: pager, value: oncall-{tier}}}]
"""


def test_a_rollout_runs_in_tier_order_and_a_failing_wave_rolls_back_before_tier_0(tmp_path: Path):
    server = XdsServerProcess(tmp_path).start()
    ports = {s: free_port() for s in TIERS}
    sidecars: list[Child] = []
    env = {**os.environ, "DGW_SERVER": f"http://127.0.0.1:{server.admin_port}", "DGW_TOKEN": server.token}
    try:
        for shard, tier in TIERS.items():
            status, body = server.call("PUT", f"/v1/shards/{shard}", {"yaml": shard_text(tier, ports[shard], "1")}, 0)
            assert status == 200, body
        for shard, tier in TIERS.items():
            sidecars.append(Child(
                [PY, "-m", "dgw.cli", "sidecar", "--server", f"127.0.0.1:{server.xds_port}", "--shard", shard,
                 "--node-id", f"{shard}-n1", "--runtime", "process", "--state-dir", str(tmp_path / "state"),
                 "--insecure", "--resync", "1", "--account", "prod", "--region", REGION[tier],
                 "--stop-dals-on-exit"],
                log=tmp_path / f"sidecar-{shard}.log"))

        def healthy() -> bool:
            data = server.get("/v1/status")
            rows = [n for n in data["nodes"] if n["shard"] in TIERS]
            return len(rows) == 4 and all(n["in_sync"] and n["dals"].get("kv", {}).get("health") == "HEALTHY"
                                          for n in rows)

        wait_for(healthy, 90, what="every gateway synced with kv healthy")

        def rollout(files: dict[str, str]) -> dict:
            folder = tmp_path / f"files-{len(list(tmp_path.glob('files-*')))}"
            folder.mkdir()
            for shard, text in files.items():
                (folder / f"{shard}.yaml").write_text(text)
            started = dgw("rollout", "start", "-f", str(folder), "--bake", "2s", "--sync-timeout", "60s",
                          "--no-watch", "-o", "json", env=env)
            assert started.returncode == 0, started.stderr
            rollout_id = json.loads(started.stdout)["id"]
            return wait_for(lambda: (r := server.get(f"/v1/rollouts/{rollout_id}"))["state"] in
                            ("succeeded", "failed", "aborted") and r, 180, what=f"rollout {rollout_id} ends")

        def audited(action: str) -> list[str]:
            entries = server.get("/v1/audit?limit=1000")["entries"]
            return [e["shard"] for e in reversed(entries) if e["action"] == action]

        good = rollout({s: shard_text(t, ports[s], "2") for s, t in TIERS.items()})
        assert good["state"] == "succeeded", good["outcome"]
        assert audited("rollout.apply") == ["ro-t3", "ro-t2", "ro-t1", "ro-t0"]
        assert [w["tier"] for w in good["waves"]] == [3, 2, 1, 0]

        files = {s: shard_text(t, ports[s], "3", broken=(s == "ro-t2")) for s, t in TIERS.items()}
        bad = rollout(files)
        assert bad["state"] == "failed"
        assert [w["state"] for w in bad["waves"]] == ["passed", "rolled_back", "pending", "pending"]
        assert "shard ro-t2 node ro-t2-n1 (prod/eu-west-1): DAL broken UNHEALTHY" in bad["outcome"]
        assert "[owners: pager oncall-2]" in bad["outcome"] and "rolled back: ro-t2 to version 2" in bad["outcome"]
        assert audited("rollout.apply") == ["ro-t3", "ro-t2", "ro-t1", "ro-t0", "ro-t3", "ro-t2"]
        assert audited("rollout.rollback") == ["ro-t2"]
        for shard in ("ro-t1", "ro-t0"):  # never reached
            assert server.get(f"/v1/shards/{shard}")["version"] == 2
        assert server.get("/v1/shards/ro-t2")["yaml"] == shard_text(2, ports["ro-t2"], "2")
        shown = dgw("rollout", "status", bad["id"], "--no-watch", env=env)
        assert "ROLLED_BACK" in shown.stdout and "outcome: wave 2 (tier 2, prod/eu-west-1) failed" in shown.stdout
        # The rolled-back shard's host goes back to its DAL alone, healthy.
        wait_for(healthy, 90, what="every gateway back in sync")
    finally:
        for child in sidecars:
            child.stop(timeout=15)
        server.stop()
