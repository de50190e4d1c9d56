"""``dgw bench data-path --overload``: what the resilience policies do for a DAL's clients
when the DAL is overloaded, and when one of its endpoints is slow.

A ``dgw server`` child, sample DALs as child processes (``dals/sample``), and one real
Envoy (``--concurrency 1``) per case, each the Envoy of its own shard, all up at once.
Endpoints are reported the way a sidecar reports them. HTTP: GET is a read, POST a write.

**Overload.** Each case's DAL serves ``--dal-concurrency`` requests at once, each for
``--service-ms`` (the rest wait in arrival order), so its capacity is known:
``concurrency / service time``. An open-loop client (``bench/overload_load.py``; a request
every 1/rate s whatever the answers do) offers 1×, 2× and 4× that capacity for
``--seconds`` each, case after case (the order rotating), ``--rounds`` times. Cases:

- ``envoy-defaults``: the shard's ``resilience:`` set to what Envoy does unconfigured
  (15 s route timeout, no retries, no hedging, breakers 1024/1024/1024/3, no shedding);
- ``tier-0``: ``deploy_desires.service_tier: 0`` and nothing else (its defaults:
  ``docs/resilience.md``);
- ``tier-0-sized``: tier 0 with the circuit breakers sized to the DAL: connections and
  requests ``concurrency + 1``, pending ``concurrency / 2`` (what a shard owner who
  knows the DAL's capacity sets; no tier can know it), and adaptive concurrency off
  (the breakers bound the DAL's concurrency exactly, per priority; the adaptive limit
  sheds high and low priority alike).

Per case and load: goodput (2xx answered within the offer window, per second, and as a
share of the nominal capacity and of the measured one: 2× capacity offered to the DAL
directly, its answers within the window; Python's timers make it a few per cent lower
than nominal), p50/p99 of the admitted (2xx) requests, the share shed (503/429/
gRPC-style refusals, and whether they carried ``retry-after``) and timed out (no answer
within ``--timeout``), the shed answers' p99 (shedding must be quick), and Envoy's CPU
per offered request from ``/proc`` (the load generator shares the machine's cores).

**Priorities.** ``tier-0-sized`` again at 4× in total: a high class (no header) at
``--high-share`` of capacity, the rest sent with ``x-dgw-priority: low``
(``priority_header: any``). Target: high ≥ 99 % success; low absorbs the shedding.

**Hedging.** A DAL of two endpoints, one answering ``--slow-ms`` late on
``--slow-percent`` of its requests; reads at ``--hedge-rate`` for ``--hedge-seconds``,
interleaved over the cases ``no-hedging`` (per-try timeout 900 ms: only the request
timeout, 1 s), ``retry`` (per-try timeout ``--per-try-ms``, hedging off: the slow try is
cancelled and tried again) and ``hedging`` (the same per-try timeout, hedging on: the
slow try keeps running and the first answer wins). Client p99 of each; target: hedging
≥ 3× lower than no-hedging. Then writes (POST) at the same rate through every case:
the calls counted at both DAL endpoints must equal the writes sent (none doubled),
while reads arrive more often than sent (the hedges).

Every load is bounded in count (rate × seconds) and time (each request ``--timeout``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

from bench.data_path import _Loader
from bench.envoys import start_envoys
from bench.overload_load import TIMEOUT, overload_main
from bench.procs import (
    BenchError,
    Child,
    ServerChild,
    cpu_times,
    finish_scratch_dir,
    http_json,
    http_text,
    scratch_dir,
    wait_for,
)
from bench.report import emit, machine, note, percentile, save_json, table
from envoy_proxy import BlockingEnvoy
from testkit.ports import free_port

LEVELS = (1.0, 2.0, 4.0)
OVERLOAD_CASES = ("envoy-defaults", "tier-0", "tier-0-sized")
HEDGE_CASES = ("no-hedging", "retry", "hedging")
SHED_STATUSES = (429, 503)
REPORT_EVERY_S = 30.0  # endpoints are reported again this often (the server keeps a report 2 min)
ENVOY_DEFAULTS = (
    "resilience:\n"
    "  timeout: 15s\n"
    "  retries: {attempts: 0}\n"
    "  hedging: false\n"
    "  circuit_breakers: {max_connections: 1024, max_pending_requests: 1024, max_requests: 1024, max_retries: 3}\n"
    "  load_shedding: {adaptive_concurrency: false}\n"
)


def _shard_text(port: int, extra: str) -> str:
    return (
        "proxy_config:\n"
        "  public_listeners:\n"
        f"    api: {{mode: http, path: {port}}}\n"
        "container_dals:\n"
        "  dal:\n"
        "    container_listeners: {api: 8081}\n" + extra
    )


def overload_shard(case: str, port: int, concurrency: int) -> str:
    if case == "envoy-defaults":
        return _shard_text(port, ENVOY_DEFAULTS)
    if case == "tier-0":
        return _shard_text(port, "deploy_desires: {service_tier: 0}\n")
    # Sized: the breakers bound the DAL's concurrency exactly, per priority; adaptive
    # concurrency (tier 0's default) is turned off, as it sheds without regard to priority.
    return _shard_text(port, (
        "deploy_desires: {service_tier: 0}\n"
        "resilience:\n"
        "  load_shedding: {priority_header: any, adaptive_concurrency: false}\n"
        f"  circuit_breakers: {{max_connections: {concurrency + 1}, max_requests: {concurrency + 1}, "
        f"max_pending_requests: {max(1, concurrency // 2)}}}\n"
    ))  # fmt: skip


def hedge_shard(case: str, port: int, per_try_ms: float) -> str:
    per_try = "900ms" if case == "no-hedging" else f"{per_try_ms:g}ms"
    hedging = "true" if case == "hedging" else "false"
    return _shard_text(port, f"resilience:\n  timeout: 1s\n  retries: {{attempts: 2, per_try_timeout: {per_try}}}\n"
                             f"  hedging: {hedging}\n")  # fmt: skip


def _dal(name: str, port: int, workdir: Path, env: dict[str, str]) -> Child:
    child = Child([sys.executable, "-m", "dals.sample"], workdir / f"dal-{name}-{port}.log",
                  {"DGW_DAL_NAME": name, "DGW_LISTENER_API_PORT": str(port), **env})  # fmt: skip
    wait_for(partial(child.serving, port, f"DAL {name}"), 20, f"DAL {name} port {port}")
    return child


class _Stack:
    """The server, every case's DALs and one Envoy per case (its own shard)."""

    def __init__(self, workdir: Path, args: argparse.Namespace) -> None:
        self.children: list[Any] = []
        self.server = ServerChild(workdir)
        self.children.append(self.server)
        self.public = {c: free_port() for c in (*OVERLOAD_CASES, *HEDGE_CASES)}
        texts = {c: overload_shard(c, self.public[c], args.dal_concurrency) for c in OVERLOAD_CASES}
        texts |= {c: hedge_shard(c, self.public[c], args.per_try_ms) for c in HEDGE_CASES}
        for case, text in texts.items():
            self.server.write_shard(case, text)
        self.server.start()
        capacity_env = {
            "SAMPLE_CONCURRENCY": str(args.dal_concurrency),
            "SAMPLE_DELAY_MS": str(args.overload_service_ms),
        }
        self.dal_ports: dict[str, list[int]] = {}
        self.reports: dict[str, dict[str, Any]] = {}
        self.reported: dict[str, float] = {}
        for case in OVERLOAD_CASES:
            port = free_port()
            self.children.append(_dal(f"{case}-dal", port, workdir, capacity_env))
            self.dal_ports[case] = [port]
        for case in HEDGE_CASES:  # two endpoints: a steady one and one slow on a share of requests
            fast, slow = free_port(), free_port()
            self.children.append(
                _dal(f"{case}-fast", fast, workdir, {"SAMPLE_DELAY_MS": str(args.hedge_service_ms)})
            )
            self.children.append(_dal(f"{case}-slow", slow, workdir, {
                "SAMPLE_DELAY_MS": str(args.hedge_service_ms), "SAMPLE_SLOW_PERCENT": str(args.slow_percent),
                "SAMPLE_SLOW_MS": str(args.hedge_slow_ms), "SAMPLE_SEED": "7"}))  # fmt: skip
            self.dal_ports[case] = [fast, slow]
        cases = list(texts)
        envoys = start_envoys([(c, f"{c}-envoy") for c in cases], self.server.xds, workdir)
        self.children.extend(envoys)
        self.envoys: dict[str, BlockingEnvoy] = dict(zip(cases, envoys, strict=True))
        for case, envoy in self.envoys.items():
            self._wire(case, envoy)

    def _wire(self, case: str, envoy: BlockingEnvoy) -> None:
        """Report the case's endpoints, then wait until its Envoy has them and answers."""
        ports = self.dal_ports[case]
        endpoints = [
            {
                "dal": "dal",
                "listener": "api",
                "address": "127.0.0.1",
                "port": p,
                "health": "HEALTHY",
            }
            for p in ports
        ]
        self.reports[case] = {"shard": case, "node_id": envoy.node_id, "endpoints": endpoints}
        self.report(case)
        wanted = [f"dal.dal.api::127.0.0.1:{p}::health_flags::healthy" for p in ports]
        wait_for(
            lambda: all(w in envoy.admin_text("/clusters") for w in wanted) and self._answers(case),
            20,
            f"Envoy of {case} to route to its DAL",
        )

    def report(self, case: str) -> None:
        """Report the case's endpoints (again), as a sidecar does: a report lives 2 minutes."""
        wait_for(
            lambda: self.server.post_report(self.reports[case]),
            20,
            "the server to accept the report",
        )
        self.reported[case] = time.monotonic()

    def keep_reported(self, case: str) -> None:
        if time.monotonic() - self.reported[case] > REPORT_EVERY_S:
            self.report(case)

    def _answers(self, case: str) -> bool:
        try:
            http_text(self.url(case), 2)
        except OSError:
            return False
        return True

    def url(self, case: str) -> str:
        return f"http://127.0.0.1:{self.public[case]}/v1/item"

    def dal_stats(self, port: int) -> dict[str, Any]:
        return http_json(f"http://127.0.0.1:{port}/stats", 5)

    def wait_idle(self, case: str, timeout: float = 30.0) -> None:
        """Until the case's DALs hold no call (what the last load left has drained)."""

        def idle() -> bool:
            return all(s["in_service"] == 0 and s["waiting"] == 0
                       for s in (self.dal_stats(p) for p in self.dal_ports[case]))  # fmt: skip

        wait_for(idle, timeout, f"the DALs of {case} to drain", interval=0.05)

    def calls(self, case: str, method: str) -> int:
        return sum(int(self.dal_stats(p)["by_method"].get(method, 0)) for p in self.dal_ports[case])

    def close(self) -> None:
        for child in reversed(self.children):
            child.stop()


def _summary(results: dict[str, list[Any]]) -> dict[str, Any]:
    status, ms, retry_after = results["status"], results["ms"], results["retry_after"]
    sent = len(status)
    ok = [m for s, m in zip(status, ms, strict=True) if 200 <= s < 300]
    shed = [m for s, m in zip(status, ms, strict=True) if s in SHED_STATUSES]
    with_retry_after = sum(
        1 for s, r in zip(status, retry_after, strict=True) if s in SHED_STATUSES and r
    )
    return {
        "sent": sent, "ok": len(ok), "shed": len(shed), "timeouts": sum(1 for s in status if s == TIMEOUT),
        "other": sent - len(ok) - len(shed) - sum(1 for s in status if s == TIMEOUT),
        "success_pct": 100 * len(ok) / sent if sent else 0.0,
        "shed_pct": 100 * len(shed) / sent if sent else 0.0,
        "shed_with_retry_after_pct": 100 * with_retry_after / len(shed) if shed else float("nan"),
        "p50_ms": percentile(ok, 50) if ok else float("nan"),
        "p99_ms": percentile(ok, 99) if ok else float("nan"),
        "shed_p99_ms": percentile(shed, 99) if shed else float("nan"),
    }  # fmt: skip


def _goodput(results: dict[str, list[Any]], offered_s: float, rate: float) -> float:
    """2xx answers that completed within the offer window, per second."""
    done = 0
    for i, (s, m) in enumerate(zip(results["status"], results["ms"], strict=True)):
        if 200 <= s < 300 and i / rate + m / 1000 <= offered_s:
            done += 1
    return done / offered_s if offered_s > 0 else 0.0


def _offer(loader: _Loader, stack: _Stack, case: str, rate: float, seconds: float, timeout: float,
           classes: dict[str, dict[str, Any]]) -> tuple[dict[str, Any], float]:  # fmt: skip
    """One bounded offer: the reply and Envoy's CPU (µs) per offered request."""
    stack.keep_reported(case)
    envoy_pid = stack.envoys[case].pid
    before = sum(cpu_times(envoy_pid))
    reply = loader.ask("offer", {"url": stack.url(case), "rate": rate, "seconds": seconds, "classes": classes,
                                 "timeout": timeout}, seconds + timeout + 60)  # fmt: skip
    cpu_us = (sum(cpu_times(envoy_pid)) - before) / max(1, reply["sent"]) * 1e6
    stack.wait_idle(case)
    return reply, cpu_us


def measure(args: argparse.Namespace) -> dict[str, Any]:
    workdir = scratch_dir("data-path-overload")
    loader = _Loader(overload_main, "overload-load")
    stack: _Stack | None = None
    ok = False
    capacity = args.dal_concurrency / (args.overload_service_ms / 1000)
    try:
        stack = _Stack(workdir, args)
        rows: list[dict[str, Any]] = []
        read = {"read": {"share": 1.0, "method": "GET"}}
        for case in OVERLOAD_CASES:  # warm every path (connections, pools) before timing
            _offer(loader, stack, case, capacity / 2, 1.0, args.timeout, read)
        # The DAL's real capacity (Python's timers add to every service time): 2× its
        # nominal capacity offered to it directly, its answers within the window counted.
        direct = stack.dal_ports["tier-0-sized"][0]
        reply = loader.ask("offer", {"url": f"http://127.0.0.1:{direct}/v1/item", "rate": capacity * 2,
                                     "seconds": args.seconds, "classes": read, "timeout": args.timeout},
                           args.seconds + args.timeout + 60)  # fmt: skip
        measured = _goodput(reply["results"]["read"], reply["offered_s"], capacity * 2)
        stack.wait_idle("tier-0-sized")
        note(f"the DAL's capacity: {capacity:.0f}/s nominal, {measured:.1f}/s measured")
        for r in range(args.overload_rounds):
            for case in OVERLOAD_CASES[r % 3 :] + OVERLOAD_CASES[: r % 3]:
                for level in LEVELS:
                    rate = capacity * level
                    note(
                        f"round {r + 1}/{args.overload_rounds} {case}: {level:g}× capacity ({rate:.0f}/s) for {args.seconds:g}s"
                    )
                    reply, cpu_us = _offer(
                        loader, stack, case, rate, args.seconds, args.timeout, read
                    )
                    res = reply["results"]["read"]
                    goodput = _goodput(res, reply["offered_s"], rate)
                    rows.append({"round": r + 1, "case": case, "load": level, "offered_rps": rate,
                                 "goodput_rps": goodput, "goodput_pct": 100 * goodput / capacity,
                                 "goodput_vs_measured_pct": 100 * goodput / measured,
                                 **_summary(res), "envoy_cpu_us": cpu_us})  # fmt: skip
        priority: list[dict[str, Any]] = []
        classes = {"high": {"share": args.high_share / 4, "method": "GET"},
                   "low": {"share": 1 - args.high_share / 4, "method": "GET", "headers": {"x-dgw-priority": "low"}}}  # fmt: skip
        for r in range(args.overload_rounds):
            note(
                f"round {r + 1}/{args.overload_rounds} priorities: 4× capacity, high {args.high_share:g}×"
            )
            reply, cpu_us = _offer(
                loader, stack, "tier-0-sized", capacity * 4, args.seconds, args.timeout, classes
            )
            for name in classes:
                priority.append({"round": r + 1, "class": name, **_summary(reply["results"][name])})
        hedge_rows: list[dict[str, Any]] = []
        for r in range(args.overload_rounds):
            for case in HEDGE_CASES[r % 3 :] + HEDGE_CASES[: r % 3]:
                note(
                    f"round {r + 1}/{args.overload_rounds} {case}: reads at {args.hedge_rate:g}/s for {args.hedge_seconds:g}s"
                )
                before = stack.calls(case, "GET")
                reply, cpu_us = _offer(
                    loader, stack, case, args.hedge_rate, args.hedge_seconds, args.timeout, read
                )
                summary = _summary(reply["results"]["read"])
                hedge_rows.append({"round": r + 1, "case": case, **summary, "dal_reads": stack.calls(case, "GET") - before,
                                   "envoy_cpu_us": cpu_us})  # fmt: skip
        writes: dict[str, dict[str, int]] = {}
        write = {"write": {"share": 1.0, "method": "POST"}}
        for case in HEDGE_CASES:
            before = stack.calls(case, "POST")
            reply, _ = _offer(
                loader, stack, case, args.hedge_rate, args.hedge_seconds, args.timeout, write
            )
            ok_writes = sum(1 for s in reply["results"]["write"]["status"] if 200 <= s < 300)
            writes[case] = {"sent": reply["sent"], "ok": ok_writes,
                            "counted_at_dal": stack.calls(case, "POST") - before}  # fmt: skip
        ok = True
        return {
            "capacity_rps": capacity,
            "measured_capacity_rps": measured,
            "rows": rows,
            "priority": priority,
            "hedging": hedge_rows,
            "writes": writes,
        }
    finally:
        loader.stop(graceful=ok)
        if stack is not None:
            stack.close()
        finish_scratch_dir(workdir, ok)


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _range(values: list[float]) -> str:
    return f"{min(values):.3g}–{max(values):.3g}" if values else "-"


def main(args: argparse.Namespace) -> int:
    return publish(measure(args), args)


def publish(data: dict[str, Any], args: argparse.Namespace) -> int:
    """The checks, the JSON (saved unless ``--no-save``) and the tables of ``measure``'s data."""
    rows, capacity = data["rows"], data["capacity_rps"]
    checks = []

    def rows_of(case: str, level: float) -> list[dict[str, Any]]:
        return [r for r in rows if r["case"] == case and r["load"] == level]

    for case in OVERLOAD_CASES:
        base = _median([r["p99_ms"] for r in rows_of(case, 1.0)])
        at4 = rows_of(case, 4.0)
        p99_ratio = _median([r["p99_ms"] for r in at4]) / base if base else float("nan")
        goodput = _median([r["goodput_vs_measured_pct"] for r in at4])
        for r in rows:
            if r["case"] == case:
                r["p99_vs_1x"] = r["p99_ms"] / base if base else float("nan")
        if case != "envoy-defaults":
            checks.append({"target": f"{case} at 4×: admitted p99 ≤ 2× its 1× value", "value": p99_ratio,
                           "ok": p99_ratio <= 2.0})  # fmt: skip
            checks.append({"target": f"{case} at 4×: goodput ≥ 90 % of the DAL's measured capacity", "value": goodput,
                           "ok": goodput >= 90.0})  # fmt: skip
    high = [r["success_pct"] for r in data["priority"] if r["class"] == "high"]
    checks.append({"target": "priorities at 4×: high class ≥ 99 % success (worst round)", "value": min(high),
                   "ok": min(high) >= 99.0})  # fmt: skip
    p99 = {
        c: _median([r["p99_ms"] for r in data["hedging"] if r["case"] == c]) for c in HEDGE_CASES
    }
    gain = p99["no-hedging"] / p99["hedging"] if p99["hedging"] else float("nan")
    checks.append({"target": "one slow endpoint of two: client p99 with hedging ≥ 3× lower than without",
                   "value": gain, "ok": gain >= 3.0})  # fmt: skip
    failed = sum(r["other"] for r in data["hedging"]) + sum(
        w["sent"] - w["ok"] for w in data["writes"].values()
    )
    checks.append({"target": "one slow endpoint of two: every read and write answered 2xx", "value": failed,
                   "ok": failed == 0})  # fmt: skip
    doubled = sum(max(0, w["counted_at_dal"] - w["sent"]) for w in data["writes"].values())
    checks.append(
        {"target": "writes counted at the DAL: none doubled", "value": doubled, "ok": doubled == 0}
    )
    command = (f"dgw bench data-path --overload --dal-concurrency {args.dal_concurrency} --service-ms-overload "
               f"{args.overload_service_ms:g} --seconds {args.seconds:g} --overload-rounds {args.overload_rounds} --high-share {args.high_share:g} "
               f"--hedge-rate {args.hedge_rate:g} --hedge-seconds {args.hedge_seconds:g} --hedge-slow-ms {args.hedge_slow_ms:g} "
               f"--slow-percent {args.slow_percent:g} --per-try-ms {args.per_try_ms:g}")  # fmt: skip
    result = {
        "figure": "data-path-overload", "command": command, "machine": machine(),
        "note": "the open-loop client (Python, one process), the Envoys (1 worker each), the server and the "
                "Python sample DALs share the machine's cores; capacity is the DAL's by construction "
                f"({args.dal_concurrency} at once × {args.overload_service_ms:g} ms = {capacity:.0f}/s)",
        **data, "hedge_p99_ms": p99, "hedge_gain": gain, "targets": checks,
    }  # fmt: skip
    if args.save:
        save_json(args.name or "data-path-overload", result, args.out)
    text = table(rows, ["round", "case", "load", "offered_rps", "goodput_rps", "goodput_pct", "goodput_vs_measured_pct", "p50_ms", "p99_ms",
                        "p99_vs_1x", "shed_pct", "shed_p99_ms", "shed_with_retry_after_pct", "timeouts", "other",
                        "envoy_cpu_us"],
                 f"overload: DAL capacity {capacity:.0f}/s nominal, {data['measured_capacity_rps']:.1f}/s measured; goodput = 2xx done within the offer window; "
                 "p50/p99 of admitted (2xx); Envoy CPU per offered request")  # fmt: skip
    text += "\n\n" + table(data["priority"], ["round", "class", "sent", "ok", "success_pct", "shed_pct", "timeouts", "other",
                                              "p99_ms"], "priorities at 4× (tier-0-sized)")  # fmt: skip
    text += "\n\n" + table(data["hedging"], ["round", "case", "sent", "ok", "other", "p50_ms", "p99_ms", "dal_reads",
                                             "envoy_cpu_us"], "one slow endpoint of two: reads")  # fmt: skip
    text += "\n\n" + table(
        [{"case": c, **w} for c, w in data["writes"].items()],
        ["case", "sent", "ok", "counted_at_dal"],
        "writes: counted at the DAL endpoints",
    )
    for c in checks:
        text += f"\n  {'PASS' if c['ok'] else 'FAIL'}  {c['target']}  (measured {c['value']:.3g})"
    emit(result, text, args.json)
    return 0 if all(c["ok"] for c in checks) else 1


def check_args(args: argparse.Namespace) -> None:
    if (
        args.dal_concurrency < 1
        or args.overload_service_ms <= 0
        or args.seconds <= 0
        or args.overload_rounds < 1
    ):
        raise BenchError(
            "--dal-concurrency, --service-ms-overload, --seconds and --overload-rounds must be positive"
        )
    if args.dal_concurrency / args.overload_service_ms * 1000 * 4 * args.seconds > 20_000:
        raise BenchError(
            "the 4× load would exceed 20,000 requests: lower --seconds or the DAL's capacity"
        )
    if not 0 < args.high_share < 4:
        raise BenchError("--high-share must be above 0 and below 4 (capacities of the 4× total)")


def run(args: argparse.Namespace) -> int:
    check_args(args)
    return main(args)
