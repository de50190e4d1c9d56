"""``dgw bench plan``: how long a capacity plan takes through the server.

A ``dgw server`` child; the seed's deploy desires posted as a file (``POST
/v1/plans``, what ``dgw plan FILE`` does), timed until the plan is there:

- **first**: the first plan after the server started (its planner worker is started
  and loads numpy, scipy and the planner first);
- **cold**: a plan not yet cached, the worker warm (each round scales the rates, so
  every one is new);
- **cached**: the same desires asked again (the plan is a config-store record), the
  server's answer alone, and ``dgw plan FILE`` as a user runs it (the process's start
  included).

Rounds are interleaved (cold, cached, cold, ...) so that a loaded machine weighs on
both alike.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from bench.procs import BenchError, ServerChild, finish_scratch_dir, scratch_dir
from bench.report import emit, machine, note, percentile, save_json, table

ROOT = Path(__file__).resolve().parents[1]
SEED = ROOT / "tests" / "examples" / "deploy" / "kv-deploy-desires.yaml"
TARGET_COLD_S = 2.0
TARGET_CACHED_S = 0.050


def _post(server: ServerChild, text: str) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{server.admin_port}/v1/plans", data=json.dumps({"yaml": text, "file": "seed"}).encode(),
        headers={"content-type": "application/json", "Authorization": f"Bearer {server.token}"}, method="POST")  # fmt: skip
    with urllib.request.urlopen(request, timeout=60) as r:
        return r.status, json.loads(r.read())


def _until_ready(server: ServerChild, text: str, timeout: float = 120.0) -> float:
    started = time.perf_counter()
    while True:
        status, body = _post(server, text)
        if status == 200:
            return time.perf_counter() - started
        if status != 202 or time.perf_counter() - started > timeout:
            raise BenchError(f"the plan did not come: {status} {body}")
        time.sleep(0.01)


def main(args: argparse.Namespace) -> int:
    workdir = scratch_dir("plan")
    server = ServerChild(workdir, "WARNING")
    ok = False
    seed = SEED.read_text()
    try:
        server.start()
        first = _until_ready(server, seed)
        note(f"first plan after the server started: {first:.2f} s")
        cold: list[float] = []
        cached: list[float] = []
        cli: list[float] = []
        env = {**os.environ, "DGW_SERVER": f"http://127.0.0.1:{server.admin_port}", "DGW_TOKEN": server.token}
        seed_file = workdir / "seed.yaml"
        seed_file.write_text(seed)
        for i in range(args.rounds):
            text = seed.replace("mid: 20000,", f"mid: {20000 + 100 * (i + 1)},")
            cold.append(_until_ready(server, text))
            for _ in range(10):
                started = time.perf_counter()
                status, _ = _post(server, seed)
                cached.append(time.perf_counter() - started)
                if status != 200:
                    raise BenchError(f"a cached plan answered {status}")
            started = time.perf_counter()
            done = subprocess.run([sys.executable, "-m", "dgw.cli", "plan", str(seed_file)], env=env,
                                  capture_output=True, text=True, timeout=60)  # fmt: skip
            cli.append(time.perf_counter() - started)
            if done.returncode != 0:
                raise BenchError(f"dgw plan failed: {done.stderr}")
        ok = True
    finally:
        server.stop()
        finish_scratch_dir(workdir, ok, False)
    rows = [{"case": name, "p50_ms": 1000 * percentile(v, 50), "max_ms": 1000 * max(v), "runs": len(v)}
            for name, v in (("first (worker starts)", [first]), ("cold (worker warm)", cold),
                            ("cached: the server's answer", cached), ("cached: dgw plan FILE", cli))]  # fmt: skip
    targets = [
        {"target": f"cold plan ≤ {TARGET_COLD_S:g} s", "value": max(cold), "met": max(cold) <= TARGET_COLD_S},
        {"target": f"cached plan ≤ {1000 * TARGET_CACHED_S:g} ms (the server's answer, p50)",
         "value": percentile(cached, 50), "met": percentile(cached, 50) <= TARGET_CACHED_S},
    ]
    data = {"figure": "plan", "machine": machine(), "command": f"dgw bench plan --rounds {args.rounds}",
            "first_s": first, "cold_s": cold, "cached_s": cached, "cli_cached_s": cli, "targets": targets}  # fmt: skip
    text = table(rows, ["case", "p50_ms", "max_ms", "runs"], "dgw plan of the seed's deploy desires")
    if args.save:
        save_json(args.name or "plan", data, args.out)
    emit(data, text, args.json)
    return 0 if all(t["met"] for t in targets) else 1
