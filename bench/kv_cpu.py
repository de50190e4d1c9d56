"""``dgw bench kv-cpu``: the KV DAL's CPU per call, this tree against another one.

Two KV DAL children side by side on PostgreSQL (127.0.0.1:5432, a schema each, dropped
after) and one private Redis: this tree's ``dals/`` and the ``dals/`` of ``--baseline
DIR`` (any checkout, e.g. ``git archive main | tar -x -C DIR``), both run by this
venv's Python from their own directory. Each gets its own load generator process
(``bench/kv_load.py``: open loop, 80 % GetItems / 20 % PutItems of 1 KiB, plaintext
gRPC straight to the DAL, no Envoy), in blocks of ``--block`` seconds that alternate
between the two, their order swapped every round, ``--rounds`` times: a noisy minute
of a shared machine falls on both. The figure is each DAL's CPU (``/proc``, every
thread) over its blocks divided by the calls it answered, with the spread of the
per-block values, and the ratio of this tree's to the baseline's.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import sys
from contextlib import ExitStack
from functools import partial
from pathlib import Path
from typing import Any

from bench.data_path import _Loader
from bench.idle import quick_wakeups
from bench.kv import DSN, _drop_schema, _fill, _kv_config
from bench.kv_load import load_main
from bench.procs import BenchError, Child, cpu_seconds, finish_scratch_dir, scratch_dir, wait_for
from bench.report import emit, machine, note, percentile, save_json, table
from testkit.ports import free_port
from testkit.procs import ROOT
from testkit.redis import RedisServer


class _Dal:
    """One tree's KV DAL child and the load generator that drives it."""

    def __init__(self, label: str, tree: Path, workdir: Path, redis_url: str, stack: ExitStack) -> None:
        self.label = label
        self.schema = f"kv_cpu_{secrets.token_hex(4)}"
        stack.callback(_drop_schema, self.schema)
        self.port = free_port()
        api = free_port()
        env = {"KV_CONFIG": _kv_config(self.schema, redis_url, f"{self.schema}:"), "DGW_DAL_NAME": label,
               "KV_LOG_LEVEL": "WARNING", "DGW_LISTENER_SECURE_GRPC_PORT": str(self.port),
               "DGW_LISTENER_API_PORT": str(api)}  # fmt: skip
        self.child = Child([sys.executable, "-m", "dals.kv", "serve"], workdir / f"kv-{label}.log", env, cwd=tree)
        stack.callback(self.child.stop)
        for port in (self.port, api):
            wait_for(partial(self.child.serving, port, f"the {label} KV DAL"), 60, f"the {label} KV DAL on {port}")
        self.loader = _Loader(load_main, f"kv-cpu-load-{label}")
        stack.callback(self.loader.stop)
        self.cpu_s = 0.0
        self.calls = 0
        self.per_block_us: list[float] = []
        self.latencies_ms: list[float] = []
        self.errors = 0

    def prepare(self, records: int) -> None:
        asyncio.run(_fill(self.port, records))
        self.loader.ask("prepare", {"target": f"127.0.0.1:{self.port}", "tls": None, "server_name": "", "dsn": DSN,
                                    "schema": self.schema, "records": records}, 60)  # fmt: skip

    def block(self, case: str, rate: float, seconds: float, seed: int) -> None:
        before = cpu_seconds(self.child.pid)
        reply = self.loader.ask("block", {"case": case, "rate": rate, "seconds": seconds, "seed": seed},
                                seconds * 4 + 60)  # fmt: skip
        spent = cpu_seconds(self.child.pid) - before
        answered = reply["sent"] - reply["dropped"]
        self.cpu_s += spent
        self.calls += answered
        self.per_block_us.append(spent / max(answered, 1) * 1e6)
        self.latencies_ms += reply["latencies_ms"]["get"] + reply["latencies_ms"]["put"]
        self.errors += reply["errors"] + reply["dropped"]

    def row(self) -> dict[str, Any]:
        return {"tree": self.label, "calls": self.calls, "dal_cpu_us": self.cpu_s / max(self.calls, 1) * 1e6,
                "block_min_us": min(self.per_block_us), "block_max_us": max(self.per_block_us),
                "p50_ms": percentile(self.latencies_ms, 50), "p99_ms": percentile(self.latencies_ms, 99),
                "errors": self.errors}  # fmt: skip


def measure(args: argparse.Namespace) -> dict[str, Any]:
    baseline = args.baseline.resolve()
    if not (baseline / "dals" / "kv" / "__main__.py").exists():
        raise BenchError(f"--baseline {baseline}: no dals/kv there (a checkout of the project, e.g. "
                         "git archive main | tar -x -C DIR)")  # fmt: skip
    workdir = scratch_dir("kv-cpu")
    stack = ExitStack()
    ok = False
    try:
        if args.quick_wakeups:
            stack.enter_context(quick_wakeups())
        redis = RedisServer(workdir).start()
        stack.callback(redis.stop)
        dals = [_Dal("this", ROOT, workdir, redis.url, stack), _Dal("baseline", baseline, workdir, redis.url, stack)]
        case = "gateway-cached" if args.cached else "gateway"  # kv_load's names: the namespace with/without cache
        note(f"kv-cpu: filling {args.records} records in each DAL")
        for dal in dals:
            dal.prepare(args.records)
            dal.block(case, 100, 1, 7)  # warm: connections, prepared statements, the cache
            dal.cpu_s, dal.calls, dal.per_block_us, dal.latencies_ms, dal.errors = 0.0, 0, [], [], 0
        note(f"kv-cpu: {args.rounds} rounds of {args.block:g}s at {args.rate:g}/s, the two trees alternating")
        for r in range(args.rounds):
            for dal in dals if r % 2 == 0 else dals[::-1]:
                dal.block(case, args.rate, args.block, r)
        ok = True
        return {"rows": [d.row() for d in dals]}
    finally:
        stack.close()
        finish_scratch_dir(workdir, ok)


def main(args: argparse.Namespace) -> int:
    rows = measure(args)["rows"]
    this, base = rows
    ratio = this["dal_cpu_us"] / base["dal_cpu_us"]
    result = {
        "figure": "kv-cpu",
        "command": f"dgw bench kv-cpu --baseline {args.baseline} --rate {args.rate:g} --block {args.block:g} "
                   f"--rounds {args.rounds} --records {args.records}" + (" --cached" if args.cached else ""),
        "machine": machine(),
        "note": "both DALs, their load generators, PostgreSQL and Redis share the machine's cores",
        "rows": rows,
        "ratio": ratio,
    }  # fmt: skip
    if args.save:
        save_json(args.name or "kv-cpu", result, args.out)
    text = table(rows, ["tree", "calls", "dal_cpu_us", "block_min_us", "block_max_us", "p50_ms", "p99_ms", "errors"],
                 f"kv-cpu: the KV DAL's CPU µs per call at {args.rate:g}/s, 80 % GetItems / 20 % PutItems of 1 KiB"
                 + (", cached namespace" if args.cached else ""))  # fmt: skip
    text += f"\n  this tree / baseline: {ratio:.2f}"
    emit(result, text, args.json)
    return 0 if all(r["errors"] == 0 for r in rows) else 1
