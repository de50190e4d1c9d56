"""``dgw bench data-path``: what Envoy and shadow wiring cost a DAL's clients.

A ``dgw server`` child, sample DALs as child processes (``thrift``, the primary;
``cql``, the shadow target; a second ``cql`` answering ``--slow-ms`` late, the slow
target) and one real Envoy (``--concurrency 1``) per case, each the Envoy of its own
shard, all running at once. Endpoints are reported the way a sidecar reports them.
Cases, for HTTP and gRPC alike:

- ``direct``: the client talks to the primary DAL itself;
- ``envoy``: through an Envoy whose shard wires nothing (only the primary serves);
- ``shadow``: through an Envoy with ``thrift: {mode: shadow, target: cql}``;
- ``shadow-slow``: the same, the target answering ``--slow-ms`` late.

Latency: from a separate client process, one request every 1/``--rate`` s, in blocks
of ``--block`` requests, case after case (their order rotating), ``--rounds`` times:
a minute of a noisy machine falls on every case alike, and each round is a paired
sample. Shadow overhead is the primary's pooled p99 with shadow wiring over its p99
in the ``envoy`` case, with a paired-bootstrap interval over the rounds
(``bench/stats.py``). Then requests/s, closed loop (``--concurrency`` callers).

All of it once per DAL service time in ``--service-ms``: how long every DAL waits
(on its datastore, for a real one) before it answers. ``0`` is an echo that does no
work at all, the worst case for any proxy; what the mirror adds in milliseconds
(``p50_added_ms``) stays about the same as the service time grows, so its share of
the primary's latency shrinks. Each Envoy's CPU per request it carried comes from
``/proc`` (``envoy_user_us``, ``envoy_sys_us``).
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack
from functools import partial
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from bench.envoys import start_envoys, wait_applied
from bench.fleet import expected_versions
from bench.idle import quick_wakeups
from bench.load import load_main
from bench.procs import (
    BenchError,
    Child,
    ServerChild,
    cpu_times,
    finish_scratch_dir,
    http_json,
    scratch_dir,
    wait_for,
)
from bench.report import emit, machine, note, percentile, pyplot, save_json, table
from bench.shard import bench_shard
from bench.stats import pooled, ratio_interval, ratio_pct
from envoy_proxy import BlockingEnvoy
from testkit.ports import free_port
from xds_server.resources import CLUSTER, LISTENER, ROUTE

CASES = ("direct", "envoy", "shadow", "shadow-slow")
PROTOCOLS = ("http", "grpc")
SHADOW_TARGET_PCT = 5.0


class _Loader:
    """A load generator process (``target(conn)``) asked over a pipe."""

    def __init__(self, target: Callable[[Connection], None] = load_main, name: str = "data-path-load") -> None:
        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=target, args=(child,), name=name, daemon=True)
        self.proc.start()
        child.close()

    def ask(self, command: str, args: dict[str, Any], timeout: float) -> dict[str, Any]:
        self.conn.send((command, args))
        deadline = time.monotonic() + timeout
        while not self.conn.poll(0.05):
            if not self.proc.is_alive() or time.monotonic() > deadline:
                raise BenchError(f"the load client did not answer {command} within {timeout:.0f}s")
        reply: dict[str, Any] = self.conn.recv()
        if "error" in reply:
            raise BenchError(f"load client: {reply['error']}")
        return reply

    def stop(self, graceful: bool = True) -> None:
        """Ask the client to end; kill it at once when the run was cut short (it may be busy)."""
        if graceful:
            try:
                self.ask("stop", {}, 10)
            except (BenchError, OSError, EOFError):
                pass
        self.proc.join(5)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(5)


def _dal(name: str, ports: dict[str, int], workdir: Path, delay_ms: float) -> Child:
    env = {"DGW_DAL_NAME": name, "SAMPLE_DELAY_MS": str(delay_ms)}
    env.update({f"DGW_LISTENER_{k.upper()}_PORT": str(v) for k, v in ports.items()})
    child = Child([sys.executable, "-m", "dals.sample"], workdir / f"dal-{name}-{ports['api']}.log", env)
    for port in ports.values():
        wait_for(partial(child.serving, port, f"DAL {name}"), 20, f"DAL {name} port {port}")
    return child


def _endpoints(dal: str, ports: dict[str, int]) -> list[dict[str, Any]]:
    return [{"dal": dal, "listener": lst, "address": "127.0.0.1", "port": p, "health": "HEALTHY"}
            for lst, p in ports.items()]  # fmt: skip


ENVOY_CASES = ("envoy", "shadow", "shadow-slow")
_WIRING = {"envoy": None, "shadow": "{thrift: {mode: shadow, target: cql}}",
           "shadow-slow": "{thrift: {mode: shadow, target: cql}}"}  # fmt: skip
_TARGET = {"shadow": "cql", "shadow-slow": "cql-slow"}  # the target DAL process of each case


class _Stack:
    """Server, DALs, and one Envoy per case (each its own shard), all up at once."""

    def __init__(self, workdir: Path, service_ms: float, slow_ms: float) -> None:
        self.workdir = workdir
        self.children: list[ServerChild | Child | BlockingEnvoy] = []
        self.server = ServerChild(workdir)
        self.children.append(self.server)
        self.public = {c: {"api": free_port(), "secure_grpc": free_port()} for c in ENVOY_CASES}
        self.ports = {n: {"api": free_port(), "secure_grpc": free_port()} for n in ("thrift", "cql", "cql-slow")}
        texts = {c: bench_shard(self.public[c]["api"], self.public[c]["secure_grpc"], _WIRING[c]) for c in ENVOY_CASES}
        for case, text in texts.items():
            self.server.write_shard(_shard(case), text)
        self.server.start()
        self.dals = {
            "thrift": _dal("thrift", self.ports["thrift"], workdir, service_ms),
            "cql": _dal("cql", self.ports["cql"], workdir, service_ms),
            "cql-slow": _dal("cql", self.ports["cql-slow"], workdir, service_ms + slow_ms),
        }
        self.children.extend(self.dals.values())
        envoys = start_envoys([(_shard(c), f"{_shard(c)}-envoy") for c in ENVOY_CASES], self.server.xds, workdir)
        self.children.extend(envoys)
        self.envoys = dict(zip(ENVOY_CASES, envoys, strict=True))
        for case, envoy in self.envoys.items():
            self._wire(case, envoy, texts[case])

    def _wire(self, case: str, envoy: BlockingEnvoy, text: str) -> None:
        """Report the case's endpoints, then wait until its Envoy routes to them."""
        endpoints = _endpoints("thrift", self.ports["thrift"])
        if case in _TARGET:
            endpoints += _endpoints("cql", self.ports[_TARGET[case]])
        report = {"shard": envoy.shard, "node_id": envoy.node_id, "endpoints": endpoints}
        wait_for(lambda: self.server.post_report(report), 20, "the server to accept the report")
        versions = expected_versions(text)
        wait_applied(envoy, {t: versions[t] for t in (CLUSTER, LISTENER, ROUTE)}, 20)
        wanted = [f"dal.thrift.api::127.0.0.1:{self.ports['thrift']['api']}::health_flags::healthy"]
        if case in _TARGET:
            wanted.append(f"dal.cql.api::127.0.0.1:{self.ports[_TARGET[case]]['api']}::health_flags::healthy")
        wait_for(lambda: all(w in envoy.admin_text("/clusters") for w in wanted), 20, f"Envoy endpoints for {case}")

    def port(self, case: str, protocol: str) -> int:
        listener = "api" if protocol == "http" else "secure_grpc"
        return self.ports["thrift"][listener] if case == "direct" else self.public[case][listener]

    def dal_requests(self, name: str) -> int:
        return int(http_json(f"http://127.0.0.1:{self.ports[name]['api']}/stats", 5)["requests"])

    def close(self) -> None:
        for child in reversed(self.children):
            child.stop()


def _shard(case: str) -> str:
    return f"dp-{case}"


def measure(
    service_ms: float, rate: float, block: int, rounds: int, concurrency: int, slow_ms: float, quick: bool = True
) -> dict[str, Any]:  # fmt: skip
    """Every case and protocol with DALs that take ``service_ms`` to answer."""
    workdir = scratch_dir("data-path")
    hold = ExitStack()
    held = hold.enter_context(quick_wakeups()) if quick else None
    loader = _Loader()
    stack: _Stack | None = None
    ok = False
    try:
        stack = _Stack(workdir, service_ms, slow_ms)
        latencies: dict[tuple[str, str], list[list[float]]] = {}
        errors = {(c, p): 0 for c in CASES for p in PROTOCOLS}
        rps = {}
        before = {name: stack.dal_requests(name) for name in _TARGET.values()}
        cpu_us: dict[tuple[str, str], dict[str, float]] = {}
        for protocol in PROTOCOLS:
            seconds = rounds * len(CASES) * block / rate
            pids = {f"envoy/{c}": e.pid for c, e in stack.envoys.items()} | {
                f"dal/{n}": d.pid for n, d in stack.dals.items()}  # fmt: skip
            cpu_before = {k: cpu_times(pid) for k, pid in pids.items()}
            note(f"service {service_ms:g} ms, {protocol}: {len(CASES)} cases interleaved, "
                 f"{rounds} rounds of {block} requests, ~{seconds:.0f}s")  # fmt: skip
            lat = loader.ask("latency", {
                "protocol": protocol, "ports": {c: stack.port(c, protocol) for c in CASES},
                "rate": rate, "block": block, "rounds": rounds,
                "pause": 0.05 + slow_ms / 1000,  # late mirrors to the slow target land untimed
            }, seconds * 2 + rounds * len(CASES) * (0.05 + slow_ms / 1000) + 120)  # fmt: skip
            cpu_after = {k: cpu_times(pid) for k, pid in pids.items()}
            for case in CASES:
                latencies[case, protocol] = lat["latencies_ms"][case]
                errors[case, protocol] += lat["errors"][case]
            for case in ENVOY_CASES:  # CPU each Envoy (and its target) spent per request it carried
                sent = lat["sent"][case]
                use = {"envoy": f"envoy/{case}", "target": f"dal/{_TARGET.get(case, '')}"}
                cpu_us[case, protocol] = {
                    f"{who}_{kind}_us": (cpu_after[k][i] - cpu_before[k][i]) / sent * 1e6
                    for who, k in use.items() if k in pids for i, kind in enumerate(("user", "sys"))
                }  # fmt: skip
        mirrored = {case: stack.dal_requests(name) - before[name] for case, name in _TARGET.items()}
        for protocol in PROTOCOLS:
            for case in CASES:
                thr = loader.ask("throughput", {"protocol": protocol, "port": stack.port(case, protocol),
                                                "concurrency": concurrency, "seconds": 3.0}, 60)  # fmt: skip
                rps[case, protocol] = thr["rps"]
                errors[case, protocol] += thr["errors"]
                time.sleep(0.2 + slow_ms / 1000)  # mirrored requests still in flight land
        rows = []
        for protocol in PROTOCOLS:
            base = latencies["envoy", protocol]
            for case in CASES:
                values = pooled(latencies[case, protocol])
                row = {"service_ms": service_ms, "protocol": protocol, "case": case, "requests": len(values),
                       "p50_ms": percentile(values, 50), "p99_ms": percentile(values, 99),
                       "rps": rps[case, protocol], "p99_vs_envoy_pct": math.nan, "p50_added_ms": math.nan,
                       "interval_pct": "", "errors": errors[case, protocol],
                       **cpu_us.get((case, protocol), {})}  # fmt: skip
                if case in _TARGET:
                    row["p50_added_ms"] = row["p50_ms"] - percentile(pooled(base), 50)
                    row["p99_vs_envoy_pct"] = ratio_pct(base, latencies[case, protocol], 99)
                    low, high = ratio_interval(base, latencies[case, protocol], 99)
                    row["p99_vs_envoy_low_pct"], row["p99_vs_envoy_high_pct"] = low, high
                    row["interval_pct"] = f"{low:+.1f} .. {high:+.1f}"
                rows.append(row)
        ok = True
        return {"rows": rows, "mirrored_to_target": mirrored, "cpu_dma_latency_us": held,
                "samples": {f"{service_ms:g}/{c}/{p}": sorted(pooled(v)) for (c, p), v in latencies.items()}}
    finally:
        hold.close()
        loader.stop(graceful=ok)
        if stack is not None:
            stack.close()
        finish_scratch_dir(workdir, ok)


def main(args: argparse.Namespace) -> int:
    rows: list[dict[str, Any]] = []
    samples: dict[str, list[float]] = {}
    held = None
    mirrored: dict[str, dict[str, int]] = {}
    for service_ms in args.service_ms:
        data = measure(service_ms, args.rate, args.block, args.rounds, args.concurrency, args.slow_ms,
                       args.quick_wakeups)  # fmt: skip
        held = data["cpu_dma_latency_us"]
        rows.extend(data["rows"])
        samples.update(data["samples"])
        mirrored[f"{service_ms:g}"] = data["mirrored_to_target"]
    checks = []
    for row in rows:
        if row["case"] in _TARGET:
            checks.append({
                "target": f"service {row['service_ms']:g} ms, {row['protocol']} {row['case']}: "
                          f"primary p99 ≤ +{SHADOW_TARGET_PCT:g} %",
                "value": row["p99_vs_envoy_pct"], "ok": row["p99_vs_envoy_pct"] <= SHADOW_TARGET_PCT})  # fmt: skip
    checks.append({"target": "no failed requests", "value": sum(r["errors"] for r in rows),
                   "ok": all(r["errors"] == 0 for r in rows)})  # fmt: skip
    result = {
        "figure": "data-path",
        "command": f"dgw bench data-path --service-ms {','.join(f'{s:g}' for s in args.service_ms)} "
                   f"--rate {args.rate:g} --block {args.block} --rounds {args.rounds} "
                   f"--concurrency {args.concurrency} --slow-ms {args.slow_ms:g}"
                   + ("" if args.quick_wakeups else " --let-cpus-sleep"),
        "machine": machine(),
        "note": "client, Envoys (1 worker each) and the Python sample DALs share the machine's cores; "
                + ("idle CPUs kept quick to wake (/dev/cpu_dma_latency held at 0 µs)" if held == 0 else
                   "idle CPUs left to halt (no PM QoS request held)"),
        "cpu_dma_latency_us": held,
        "rows": rows,
        "mirrored_to_target": mirrored,
        "targets": checks,
    }  # fmt: skip
    name = args.name or "data-path"
    if args.save:
        save_json(name, result, args.out)
        _plot(samples, args.service_ms, args.out / f"{name}.png")
    text = table(rows, ["service_ms", "protocol", "case", "requests", "p50_ms", "p99_ms", "rps", "p50_added_ms",
                        "p99_vs_envoy_pct", "interval_pct", "errors", "envoy_user_us", "envoy_sys_us"],
                 "data-path: latency (paced, cases interleaved; interval: 90 % paired bootstrap), "
                 "requests/s (closed loop), Envoy CPU per request")  # fmt: skip
    for c in checks:
        text += f"\n  {'PASS' if c['ok'] else 'FAIL'}  {c['target']}  (measured {c['value']:.3g})"
    emit(result, text, args.json)
    return 0 if all(c["ok"] for c in checks) else 1


def _plot(samples: dict[str, list[float]], services: list[float], path: Path) -> None:
    plt = pyplot()
    if plt is None:
        return
    fig, axes = plt.subplots(len(services), len(PROTOCOLS), figsize=(10, 3.6 * len(services)), squeeze=False)
    for row, service_ms in enumerate(services):
        for ax, protocol in zip(axes[row], PROTOCOLS, strict=True):
            for case in CASES:
                values = samples.get(f"{service_ms:g}/{case}/{protocol}", [])
                if values:
                    ax.plot(values, [(i + 1) / len(values) for i in range(len(values))], label=case)
            ax.set_xscale("log")
            ax.set_title(f"{protocol}, DAL service time {service_ms:g} ms")
            ax.set_xlabel("latency (ms)")
            ax.set_ylabel("fraction of requests")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
    fig.suptitle("data-path: latency CDF")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
