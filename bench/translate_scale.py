"""``dgw bench translate-scale``: one single-shard edit while the store holds 10 …
10,000 shards. The cost must not grow with the fleet.

In one process, the server's own objects: a ``ShardRegistry`` over a
``SnapshotCache``, filled to each size with shards translated from the xds-fleet
shard file, and a ``ConfigDir`` that reloads the edited shard's file exactly as
``dgw server`` does on a change (read, interpolate, parse, validate, translate, build
and encode the snapshot, wake the shard's streams). Each edit rewrites the wiring
of one shard's file; only ``ConfigDir.load`` is timed. Logging is on at INFO to a
file, as the server logs, and the heap is settled once filled, as ``dgw server``
does after its startup load (``xds_server.server.settle_heap``).
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

from bench.fleet import WIRINGS, shard_text
from bench.procs import rss_kib, scratch_dir
from bench.report import emit, machine, note, percentile, pyplot, save_json, table
from xds_server.cache import SnapshotCache
from xds_server.config import load_shard_text
from xds_server.shards import ShardRegistry
from xds_server.sources.config_dir import ConfigDir

TARGET_RATIO = 2.0


def measure(sizes: list[int], edits: int) -> list[dict[str, Any]]:
    workdir = scratch_dir("translate")
    handler = logging.FileHandler(workdir / "server.log")
    root = logging.getLogger()
    old_level, old_handlers = root.level, root.handlers
    root.handlers = [handler]  # the server's lines go to its log, not to this terminal
    root.setLevel(logging.INFO)
    try:
        return _measure(sizes, edits, workdir)
    finally:
        root.handlers = old_handlers
        root.setLevel(old_level)
        handler.close()
        shutil.rmtree(workdir, ignore_errors=True)


def _measure(sizes: list[int], edits: int, workdir: Path) -> list[dict[str, Any]]:
    from xds_server.server import settle_heap

    texts = [shard_text(w, 8080, 8980) for w in WIRINGS]
    bulk = load_shard_text(texts[0], "bulk.yaml", env={})
    registry = ShardRegistry(SnapshotCache())
    config_dir = ConfigDir(workdir, registry)
    edited = workdir / "scale-00000.yaml"
    edited.write_text(texts[0])
    config_dir.load(edited)
    rows = []
    held = 1
    rss_start = rss_kib(os.getpid())
    for size in sorted(sizes):
        started = time.perf_counter()
        while held < size:
            registry.apply(f"scale-{held:05d}", bulk, "bulk.yaml")
            held += 1
        fill_s = time.perf_counter() - started
        settle_heap()
        times = []
        for k in range(1, edits + 1):
            edited.write_text(texts[k % len(texts)])
            t = time.perf_counter()
            config_dir.load(edited)
            times.append((time.perf_counter() - t) * 1000)
        assert registry.shards["scale-00000"].config_yaml, "the edit was applied"
        rows.append({
            "shards": size,
            "edits": edits,
            "median_ms": percentile(times, 50),
            "p99_ms": percentile(times, 99),
            "max_ms": max(times),
            "rss_kib_per_shard": (rss_kib(os.getpid()) - rss_start) / size,
            "fill_s": fill_s,
            "edit_ms": times,
        })  # fmt: skip
        note(f"{size:,} shards: edit median {rows[-1]['median_ms']:.2f} ms, p99 {rows[-1]['p99_ms']:.2f} ms")
    gc.collect()
    return rows


def main(args: argparse.Namespace) -> int:
    rows = measure(args.sizes, args.edits)
    smallest, largest = rows[0], rows[-1]
    ratio = largest["median_ms"] / smallest["median_ms"]
    ratio_p99 = largest["p99_ms"] / smallest["p99_ms"]
    result = {
        "figure": "translate-scale",
        "command": "dgw bench translate-scale --sizes " + ",".join(map(str, args.sizes)) + f" --edits {args.edits}",
        "machine": machine(),
        f"ms_at_{smallest['shards']}": smallest["median_ms"],
        f"ms_at_{largest['shards']}": largest["median_ms"],
        "ratio": ratio,
        "p99_ratio": ratio_p99,
        "targets": [{
            "target": f"one-shard edit at {largest['shards']:,} shards ≤ {TARGET_RATIO:g}× the cost at {smallest['shards']:,}",
            "value": ratio,
            "ok": ratio <= TARGET_RATIO,
        }],
        "rows": [{k: v for k, v in r.items() if k != "edit_ms"} for r in rows],
    }
    name = args.name or "translate-scale"
    if args.save:
        save_json(name, {**result, "edit_ms": {r["shards"]: r["edit_ms"] for r in rows}}, args.out)
        _plot(rows, args.out / f"{name}.png")
    text = table(result["rows"], ["shards", "edits", "median_ms", "p99_ms", "max_ms", "rss_kib_per_shard", "fill_s"],
                 "translate-scale: one single-shard edit (ConfigDir.load) vs shards held")  # fmt: skip
    check = result["targets"][0]
    text += f"\n  {'PASS' if check['ok'] else 'FAIL'}  {check['target']}  (measured {ratio:.2f}×, p99 {ratio_p99:.2f}×)"
    emit(result, text, args.json)
    return 0 if check["ok"] else 1


def _plot(rows: list[dict[str, Any]], path: Path) -> None:
    plt = pyplot()
    if plt is None:
        return
    fig, ax = plt.subplots(figsize=(6, 3.8))
    xs = [r["shards"] for r in rows]
    ax.plot(xs, [r["median_ms"] for r in rows], marker="o", label="median")
    ax.plot(xs, [r["p99_ms"] for r in rows], marker="s", label="p99")
    ax.set_xscale("log")
    ax.set_ylim(bottom=0)
    ax.set_xlabel("shards held by the server")
    ax.set_ylabel("one single-shard edit (ms)")
    ax.set_title("translate-scale")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
