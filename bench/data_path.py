"""``dgw bench data-path``: what Envoy and shadow wiring cost a DAL's clients.

A ``dgw server`` child, one real Envoy (``--concurrency 1``), sample DALs as child
processes: ``thrift`` (the primary), ``cql`` (the shadow target) and a slow ``cql``
(every answer delayed ``--slow-ms``). Endpoints are reported the way a sidecar
reports them. Cases, for HTTP and gRPC alike:

- ``direct``: the client talks to the primary DAL itself;
- ``envoy``: through Envoy, the shard wires nothing (only the primary serves);
- ``shadow``: through Envoy with ``thrift: {mode: shadow, target: cql}``;
- ``shadow-slow``: the same, the target answering ``--slow-ms`` late.

Each case is measured paced (``--rate`` requests/s for ``--seconds`` on one
keep-alive connection, blocking calls: p50/p99) and then closed loop
(``--concurrency`` callers: requests/s), from a separate client process. Cases are interleaved over ``--rounds`` rounds so that drift of the
machine hits all of them alike; percentiles pool the rounds. Shadow overhead is the
primary's p99 with shadow wiring over its p99 without (the ``envoy`` case).

With ``--pin`` the shadow targets run on the last CPU and everything on the
primary's path (client, Envoy, primary DAL, server) on the others, as a target
would run on cores (or a host) of its own: what is left is what the wiring costs
the primary, without the target's own CPU use competing with it.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from bench.envoys import EnvoyChild
from bench.shard import bench_shard
from bench.fleet import expected_versions
from bench.load import load_main
from bench.procs import BenchError, Child, ServerChild, free_port, http_json, port_open, wait_for
from bench.report import emit, machine, note, percentile, pyplot, save_json, table
from xds_server.resources import CLUSTER, LISTENER, ROUTE

CASES = ("direct", "envoy", "shadow", "shadow-slow")
PROTOCOLS = ("http", "grpc")
SHADOW_TARGET_PCT = 5.0

class _Loader:
    def __init__(self, cpus: frozenset[int] | None) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=load_main, args=(child, cpus), name="data-path-load", daemon=True)
        self.proc.start()
        child.close()

    def ask(self, command: str, args: dict, timeout: float) -> dict:
        self.conn.send((command, args))
        deadline = time.monotonic() + timeout
        while not self.conn.poll(0.05):
            if not self.proc.is_alive() or time.monotonic() > deadline:
                raise BenchError(f"the load client did not answer {command} within {timeout:.0f}s")
        reply = self.conn.recv()
        if "error" in reply:
            raise BenchError(f"load client: {reply['error']}")
        return reply

    def stop(self) -> None:
        try:
            self.ask("stop", {}, 10)
        except (BenchError, OSError, EOFError):
            pass
        self.proc.join(5)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(5)


def _dal(name: str, ports: dict[str, int], workdir: Path, cpus: frozenset[int] | None, delay_ms: float = 0) -> Child:
    env = {"DGW_DAL_NAME": name, "SAMPLE_DELAY_MS": str(delay_ms)}
    env.update({f"DGW_LISTENER_{k.upper()}_PORT": str(v) for k, v in ports.items()})
    child = Child([sys.executable, "-m", "dals.sample"], workdir / f"dal-{name}-{ports['api']}.log", env,
                  cpus=cpus)  # fmt: skip
    for port in ports.values():
        wait_for(lambda: (child.check(f"DAL {name}"), port_open(port))[1], 20, f"DAL {name} port {port}")
    return child


def _endpoints(dal: str, ports: dict[str, int]) -> list[dict]:
    return [{"dal": dal, "listener": lst, "address": "127.0.0.1", "port": p, "health": "HEALTHY"}
            for lst, p in ports.items()]  # fmt: skip


class _Stack:
    """Server, DALs and Envoy, reconfigured case by case."""

    def __init__(self, workdir: Path, slow_ms: float, cpus: tuple[frozenset[int], frozenset[int]] | None) -> None:
        self.workdir = workdir
        self.children: list = []
        primary, target = cpus or (None, None)
        self.server = ServerChild(workdir, cpus=primary)
        self.children.append(self.server)
        self.public = {"api": free_port(), "secure_grpc": free_port()}
        self.ports = {n: {"api": free_port(), "secure_grpc": free_port()} for n in ("thrift", "cql", "cql-slow")}
        self.server.write_shard("dp", bench_shard(self.public["api"], self.public["secure_grpc"]))
        self.server.start()
        self.children.append(_dal("thrift", self.ports["thrift"], workdir, primary))
        self.children.append(_dal("cql", self.ports["cql"], workdir, target))
        self.children.append(_dal("cql", self.ports["cql-slow"], workdir, target, slow_ms))
        self.envoy = EnvoyChild("dp", "dp-envoy", self.server.xds, workdir, cpus=primary)
        self.children.append(self.envoy)
        self.envoy.wait_ready()
        self.case = ""

    def configure(self, case: str) -> None:
        if case == self.case or case == "direct":
            return
        shadow = case.startswith("shadow")
        text = bench_shard(self.public["api"], self.public["secure_grpc"], "{thrift: {mode: shadow, target: cql}}" if shadow else None)
        target = self.ports["cql-slow" if case == "shadow-slow" else "cql"]
        self.server.write_shard("dp", text)
        report = {"shard": "dp", "node_id": "dp-envoy",
                  "endpoints": _endpoints("thrift", self.ports["thrift"]) + _endpoints("cql", target)}  # fmt: skip
        wait_for(lambda: self._post_report(report), 20, "the server to accept the report")
        versions = expected_versions(text)
        self.envoy.wait_applied({t: versions[t] for t in (CLUSTER, LISTENER, ROUTE)}, 20)
        wanted = [f"dal.thrift.api::127.0.0.1:{self.ports['thrift']['api']}::health_flags::healthy"]
        if shadow:
            wanted.append(f"dal.cql.api::127.0.0.1:{target['api']}::health_flags::healthy")
        wait_for(lambda: all(w in self.envoy.admin("/clusters") for w in wanted), 20, f"Envoy endpoints for {case}")
        self.case = case

    def _post_report(self, report: dict) -> bool:
        import json
        import urllib.request

        request = urllib.request.Request(
            f"http://127.0.0.1:{self.server.admin_port}/v1/reports", data=json.dumps(report).encode(),
            headers={"content-type": "application/json"}, method="POST",
        )  # fmt: skip
        with urllib.request.urlopen(request, timeout=5) as r:
            return r.status == 200

    def port(self, case: str, protocol: str) -> int:
        listener = "api" if protocol == "http" else "secure_grpc"
        return self.ports["thrift"][listener] if case == "direct" else self.public[listener]

    def dal_requests(self, name: str) -> int:
        return http_json(f"http://127.0.0.1:{self.ports[name]['api']}/stats", 5)["requests"]

    def close(self) -> None:
        for child in reversed(self.children):
            child.stop()


def pinned_cpus() -> tuple[frozenset[int], frozenset[int]]:
    """(everything on the primary's path, the shadow targets): the last CPU for the targets."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        raise BenchError("--pin needs at least 2 CPUs")
    return frozenset(cpus[:-1]), frozenset(cpus[-1:])


def measure(
    seconds: float, rate: float, concurrency: int, slow_ms: float, rounds: int, pin: bool = False
) -> dict:
    workdir = Path(tempfile.mkdtemp(prefix="dgw-bench-data-path-"))
    cpus = pinned_cpus() if pin else None
    loader = _Loader(cpus[0] if cpus else None)
    stack: _Stack | None = None
    ok = False
    try:
        stack = _Stack(workdir, slow_ms, cpus)
        samples = {(c, p): [] for c in CASES for p in PROTOCOLS}
        rps = {(c, p): [] for c in CASES for p in PROTOCOLS}
        errors = {(c, p): 0 for c in CASES for p in PROTOCOLS}
        mirrored = {}
        for r in range(rounds):
            for case in CASES:
                stack.configure(case)
                target = "cql-slow" if case == "shadow-slow" else "cql"
                before = stack.dal_requests(target)
                for protocol in PROTOCOLS:  # latency first: no backlog of a throughput run
                    lat = loader.ask("latency", {"protocol": protocol, "port": stack.port(case, protocol),
                                                 "rate": rate, "seconds": seconds}, seconds + 90)  # fmt: skip
                    samples[case, protocol].extend(lat["latencies_ms"])
                    errors[case, protocol] += lat["errors"]
                if case.startswith("shadow"):
                    mirrored[case] = mirrored.get(case, 0) + stack.dal_requests(target) - before
                for protocol in PROTOCOLS:
                    thr = loader.ask("throughput", {"protocol": protocol, "port": stack.port(case, protocol),
                                                    "concurrency": concurrency, "seconds": min(3.0, seconds)},
                                     60)  # fmt: skip
                    rps[case, protocol].append(thr["rps"])
                    errors[case, protocol] += thr["errors"]
                time.sleep(1.0 + 2 * slow_ms / 1000)  # mirrored requests still in flight drain
                note(f"round {r + 1}/{rounds} {case}: " + ", ".join(
                    f"{p} p99 {percentile(samples[case, p], 99):.2f} ms" for p in PROTOCOLS))  # fmt: skip
        rows = []
        for protocol in PROTOCOLS:
            base_p99 = percentile(samples["envoy", protocol], 99)
            for case in CASES:
                values = samples[case, protocol]
                p99 = percentile(values, 99)
                rows.append({
                    "protocol": protocol, "case": case, "requests": len(values),
                    "p50_ms": percentile(values, 50), "p99_ms": p99,
                    "rps": sum(rps[case, protocol]) / len(rps[case, protocol]),
                    "p99_vs_envoy_pct": (p99 / base_p99 - 1) * 100 if case.startswith("shadow") else float("nan"),
                    "errors": errors[case, protocol],
                })  # fmt: skip
        ok = True
        return {"rows": rows, "mirrored_to_target": mirrored,
                "samples": {f"{c}/{p}": sorted(v) for (c, p), v in samples.items()}}
    finally:
        loader.stop()
        if stack is not None:
            stack.close()
        if ok:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            note(f"logs kept in {workdir}")


def main(args) -> int:
    data = measure(args.seconds, args.rate, args.concurrency, args.slow_ms, args.rounds, args.pin)
    rows = data["rows"]
    checks = []
    for row in rows:
        if row["case"].startswith("shadow"):
            checks.append({"target": f"{row['protocol']} {row['case']}: primary p99 ≤ +{SHADOW_TARGET_PCT:g} %",
                           "value": row["p99_vs_envoy_pct"], "ok": row["p99_vs_envoy_pct"] <= SHADOW_TARGET_PCT})  # fmt: skip
    checks.append({"target": "no failed requests", "value": sum(r["errors"] for r in rows),
                   "ok": all(r["errors"] == 0 for r in rows)})  # fmt: skip
    result = {
        "figure": "data-path",
        "command": f"dgw bench data-path --seconds {args.seconds:g} --rate {args.rate:g} "
                   f"--concurrency {args.concurrency} --slow-ms {args.slow_ms:g} --rounds {args.rounds}"
                   + (" --pin" if args.pin else ""),
        "machine": machine(),
        "note": ("shadow targets pinned to the last CPU; client, Envoy (1 worker) and the primary DAL "
                 "share the others" if args.pin else
                 "client, Envoy (1 worker) and the Python sample DALs share the machine's cores"),
        "rows": rows,
        "mirrored_to_target": data["mirrored_to_target"],
        "targets": checks,
    }
    name = args.name or ("data-path-pinned" if args.pin else "data-path")
    if args.save:
        save_json(name, result, args.out)
        _plot(data["samples"], args.out / f"{name}.png")
    text = table(rows, ["protocol", "case", "requests", "p50_ms", "p99_ms", "rps", "p99_vs_envoy_pct", "errors"],
                 "data-path: latency (paced, one connection) and requests/s (closed loop)")  # fmt: skip
    for c in checks:
        text += f"\n  {'PASS' if c['ok'] else 'FAIL'}  {c['target']}  (measured {c['value']:.3g})"
    emit(result, text, args.json)
    return 0 if all(c["ok"] for c in checks) else 1


def _plot(samples: dict[str, list[float]], path: Path) -> None:
    plt = pyplot()
    if plt is None:
        return
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, protocol in zip(axes, PROTOCOLS):
        for case in CASES:
            values = samples[f"{case}/{protocol}"]
            if values:
                ys = [(i + 1) / len(values) for i in range(len(values))]
                ax.plot(values, ys, label=case)
        ax.set_xscale("log")
        ax.set_title(protocol)
        ax.set_xlabel("latency (ms)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_ylabel("fraction of requests")
    fig.suptitle("data-path: latency CDF")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
