"""``dgw bench rollout``: a rollout across S shards of N simulated nodes (the fleet bench's).

Method (see ``bench/README.md``):

1. A ``dgw server`` child; a build of ``dals/thrift`` pushed to the artifact index
   (a files build: no Docker needed); S shards (the fleet bench's shard, its DAL
   pinned to ``dals/thrift`` branch main) over 4 tiers and ``--regions`` locations,
   created through the API in batches.
2. N nodes, node i in shard i mod S, each as a gateway host: an Envoy-like ADS client
   (``bench.fleet_worker``, ACKing every version) and a sidecar-like agent
   (``bench.report_worker``: it follows the shard's config over WatchConfig and reports
   the config it runs with its DALs healthy, as a sidecar does once it has recreated
   them).
3. A second build is pushed to ``main`` and ``POST /v1/rollouts`` re-resolves every
   shard: the server plans the waves (tier 3 first, by location within a tier), and
   for each wave applies it as one batch, waits until every node of its shards runs
   the new config (Envoys SYNCED, sidecars reporting it, DALs healthy), bakes
   ``--bake`` seconds and judges. Per wave, from the rollout's own record: apply
   (begin → stored and served), take (→ every node there), judge (bake end → passed);
   **time beyond the bake** = the wave's whole time − bake. The server's CPU
   (utime+stime) is sampled at every wave boundary: **CPU per wave**, beside the
   idle server's CPU over the same time.
"""

from __future__ import annotations

import argparse
import hashlib
import time
from dataclasses import dataclass
from typing import Any

from bench.fleet import _Workers, expected_versions
from bench.fleet_worker import WorkerSpec
from bench.procs import (
    BenchError,
    ServerChild,
    cpu_seconds,
    finish_scratch_dir,
    scratch_dir,
    wait_for,
)
from bench.report import emit, machine, note, percentile, save_json, table
from bench.report_worker import ReportSpec, report_main
from bench.shard import bench_shard
from testkit.ports import free_port

TARGET_BEYOND_BAKE_S = 2.0
REGIONS = ("us-east-1", "us-west-2", "eu-west-1", "ap-south-1")


@dataclass
class RolloutOptions:
    shards: int = 1000
    nodes: int = 1000
    regions: int = 2
    bake_s: float = 2.0
    workers: int = 2
    deadline: float = 900.0
    keep: bool = False


def shard_text(tier: int, region: str, http: int, grpc: int) -> str:
    return bench_shard(http, grpc) + (
        "deploy_desires:\n"
        f"  service_tier: {tier}\n"
        f"  locations: [{{account: bench, regions: [{region}]}}]\n"
        "  owners: [{type: pager, value: bench}]\n"
        "  version_set:\n"
        "    artifacts:\n"
        "      dals/thrift: {kind: branch, value: main}\n"
    )


def _build(n: int) -> dict[str, Any]:
    digest = "sha256:" + hashlib.sha256(f"bench build {n}".encode()).hexdigest()
    return {"digest": digest, "kind": "files", "source": f"/bench/thrift-{n}", "refs": ["branch/main"]}


def _post(server: ServerChild, path: str, body: dict[str, Any]) -> dict[str, Any]:
    import json
    import urllib.error
    import urllib.request

    request = urllib.request.Request(
        f"http://127.0.0.1:{server.admin_port}{path}", data=json.dumps(body).encode(), method="POST",
        headers={"content-type": "application/json", "Authorization": f"Bearer {server.token}"})  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=120) as r:
            answer: dict[str, Any] = json.loads(r.read())
            return answer
    except urllib.error.HTTPError as e:
        raise BenchError(f"POST {path}: {e.code} {e.read()[:500]!r}") from None


def run_rollout(o: RolloutOptions) -> dict[str, Any]:
    hard_deadline = time.monotonic() + o.deadline
    workdir = scratch_dir("rollout")
    server = ServerChild(workdir, "WARNING")
    ads: _Workers | None = None
    reporters: _Workers | None = None
    ok = False

    def left() -> float:
        remaining = hard_deadline - time.monotonic()
        if remaining <= 0:
            raise BenchError(f"the run passed its {o.deadline:.0f}s deadline")
        return remaining

    try:
        http, grpc = free_port(), free_port()
        shards = [f"ro-{i:04d}" for i in range(o.shards)]
        place = {s: (i % 4, REGIONS[(i // 4) % o.regions]) for i, s in enumerate(shards)}
        texts = {s: shard_text(t, r, http, grpc) for s, (t, r) in place.items()}
        server.start()
        _post(server, "/v1/artifacts/dals/thrift", _build(1))
        for start in range(0, len(shards), 100):
            server.put_batch({s: (texts[s], 0) for s in shards[start:start + 100]})
        note(f"{len(shards)} shards stored; {o.nodes} nodes connecting")
        # A shard's tier sets its resilience defaults, so its resources: one translation a tier.
        by_tier = {t: expected_versions(shard_text(t, REGIONS[0], http, grpc)) for t in {t for t, _ in place.values()}}
        nodes = [(f"node-{i:05d}", shards[i % len(shards)]) for i in range(o.nodes)]
        per = (len(nodes) + o.workers - 1) // o.workers
        ads = _Workers([WorkerSpec(server.xds, nodes[k:k + per]) for k in range(0, len(nodes), per)])
        answers = ads.ask("connect", {"targets": {s: by_tier[place[s][0]] for s in shards}, "timeout": min(300, left())}, left())
        if sum(a["failed_count"] for a in answers):
            raise BenchError(f"nodes did not sync: {answers[0]['failed'][:5]}")
        reporters = _Workers([ReportSpec(server.xds, nodes[k:k + per]) for k in range(0, len(nodes), per)],
                             target=report_main)  # fmt: skip
        reporters.ask("start", {"timeout": min(300, left())}, left())
        wait_for(lambda: len(server.get("/v1/status")["nodes"]) >= o.nodes, min(120, left()), "every node in status")
        note("fleet up: every node synced and reporting")

        time.sleep(2.0)
        idle_started, idle_cpu = time.monotonic(), cpu_seconds(server.pid)
        time.sleep(5.0)
        idle_rate = (cpu_seconds(server.pid) - idle_cpu) / (time.monotonic() - idle_started)

        _post(server, "/v1/artifacts/dals/thrift", _build(2))
        started = time.monotonic()
        rollout = _post(server, "/v1/rollouts", {"bake_s": o.bake_s, "sync_timeout_s": 120, "baseline_s": 10,
                                                  "message": "bench: build 2"})  # fmt: skip
        note(f"rollout {rollout['id']}: {len(rollout['targets'])} shards in {len(rollout['waves'])} waves")
        cpu_marks: dict[int, list[float]] = {}
        ended: set[int] = set()
        before = cpu_seconds(server.pid)
        last: dict[str, Any] = rollout
        while last["state"] == "running":
            if time.monotonic() - started > left():
                raise BenchError("the rollout did not end before the deadline")
            last = server.get(f"/v1/rollouts/{rollout['id']}")
            cpu = cpu_seconds(server.pid)
            for w in last["waves"]:
                # From the first look that finds it begun to the first that finds it over.
                if w["state"] in ("applying", "baking") or (w["state"] != "pending" and w["index"] not in ended):
                    cpu_marks.setdefault(w["index"], [before, before])[1] = cpu
                    if w["state"] not in ("applying", "baking"):
                        ended.add(w["index"])
            before = cpu
            time.sleep(0.2)  # each look costs the server a live view of the wave
        if last["state"] != "succeeded":
            raise BenchError(f"the rollout ended {last['state']}: {last['outcome']}")
        waves = []
        for w in last["waves"]:
            total = w["finished_at"] - w["started_at"]
            marks = cpu_marks.get(w["index"], [0.0, 0.0])
            waves.append({
                "wave": w["index"] + 1, "tier": w["tier"], "location": w["location"], "shards": len(w["shards"]),
                "apply_s": w["applied_at"] - w["started_at"], "take_s": w["synced_at"] - w["applied_at"],
                "judge_s": w["finished_at"] - w["synced_at"] - o.bake_s, "beyond_bake_s": total - o.bake_s,
                "cpu_s": marks[1] - marks[0], "idle_cpu_s": idle_rate * total,
            })  # fmt: skip
        beyond = [w["beyond_bake_s"] for w in waves]
        ok = True
        return {
            "shards": o.shards, "nodes": o.nodes, "waves": waves, "bake_s": o.bake_s,
            "beyond_bake_p50_s": percentile(beyond, 50), "beyond_bake_max_s": max(beyond),
            "cpu_s_per_wave": sum(w["cpu_s"] for w in waves) / len(waves), "idle_cpu_rate": idle_rate,
            "rollout_s": time.monotonic() - started,
        }  # fmt: skip
    finally:
        for workers in (reporters, ads):
            if workers is not None:
                workers.stop()
        server.stop()
        finish_scratch_dir(workdir, ok, o.keep)


def main(args: argparse.Namespace) -> int:
    options = RolloutOptions(shards=args.shards, nodes=args.nodes or args.shards, regions=args.regions,
                             bake_s=args.bake, workers=args.workers, keep=args.keep)  # fmt: skip
    result = run_rollout(options)
    worst = result["beyond_bake_max_s"]
    data = {"figure": "rollout", "machine": machine(), "command": "dgw bench rollout " + " ".join(
        f"--{k} {v}" for k, v in (("shards", options.shards), ("nodes", options.nodes), ("regions", options.regions),
                                  ("bake", options.bake_s))),
        **result, "targets": [{"target": f"time per wave beyond the bake ≤ {TARGET_BEYOND_BAKE_S:g} s",
                               "value": worst, "met": worst <= TARGET_BEYOND_BAKE_S}]}  # fmt: skip
    text = table(result["waves"], ["wave", "tier", "location", "shards", "apply_s", "take_s", "judge_s",
                                   "beyond_bake_s", "cpu_s", "idle_cpu_s"],
                 f"rollout of {options.shards} shards, {options.nodes} nodes, bake {options.bake_s:g} s")  # fmt: skip
    text += (f"\ntime beyond the bake: p50 {result['beyond_bake_p50_s']:.2f} s, max {worst:.2f} s "
             f"(target ≤ {TARGET_BEYOND_BAKE_S:g} s); server CPU per wave {result['cpu_s_per_wave']:.2f} s")
    if args.save:
        save_json(args.name or f"rollout-{options.shards}", data, args.out)
    emit(data, text, args.json)
    return 0 if worst <= TARGET_BEYOND_BAKE_S else 1
