"""``dgw bench data-path --tls``: what mTLS + RBAC cost on the data path.

One gateway Envoy (``--concurrency 1``) of one shard serves two HTTP listeners in front
of the same sample DAL: ``api`` in plaintext and ``secure_api`` with ``tls_creds`` and
``authz`` (mTLS with its certificate over SDS from a LocalSds in a child process, and the
deny-by-default RBAC from the shard's consumers). A ``dgw client-proxy`` child
originates mTLS to ``secure_api`` for a plaintext client.

- latency (paced, interleaved in blocks, each case on its own kept-alive connection,
  as the other data-path cases): ``envoy`` (plaintext), ``mtls`` (the client speaks
  TLS with its certificate, the added cost of TLS + RBAC, client side included) and
  ``client-proxy`` (plaintext to the local proxy, which holds mTLS to the gateway);
  the added p50/p99 are against ``envoy``.
- new mTLS connections per second: ``openssl s_time -new`` callers (C, one per
  ``--tls-callers``) open connection after connection with the client certificate;
  counted by the gateway's own ``ssl.handshake`` stat (handshakes it completed, client
  certificate verified), over the wall time, with the Envoy's CPU per handshake.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from functools import partial
from pathlib import Path
from typing import Any

from bench.data_path import _dal, _Loader
from bench.idle import quick_wakeups
from bench.procs import (
    BenchError,
    Child,
    ServerChild,
    cpu_times,
    finish_scratch_dir,
    scratch_dir,
    wait_for,
)
from bench.report import emit, machine, note, percentile, save_json, table
from bench.stats import pooled
from dgw.ca_cli import issue
from envoy_proxy import BlockingEnvoy, EnvoyError, make_bootstrap
from testkit.ports import free_port
from testkit.procs import ChildExited
from testkit.sds import SdsChild
from testkit.wait import WaitTimeout
from xds_server.security.ca import CertificateAuthority
from xds_server.security.identity import consumer_id, gateway_id

SHARD = "dp-tls"
ADDRESS = "dp-tls.bench"
APP = "bench-client"
CASES = ("envoy", "mtls", "client-proxy")
P50_ADDED_TARGET_MS = 0.1
_LIFETIME = dt.timedelta(hours=1)


def _shard(api: int, secure: int, dal: dict[str, int]) -> str:
    return json.dumps({
        "proxy_config": {"public_listeners": {
            "api": {"mode": "http", "path": api},
            "secure_api": {"mode": "http", "path": secure, "tls_creds": "metatron", "authz": "gandalf"},
        }},
        "container_dals": {"thrift": {"container_listeners": dal}},
        "registrations": [{"address": ADDRESS}],
        "deploy_desires": {"consumers": [{"type": "account-app", "value": APP, "group": "read-write"}]},
    })  # fmt: skip  (JSON is YAML)


class _Stack:
    def __init__(self, workdir: Path, short: Path, service_ms: float) -> None:
        self.workdir = workdir
        self.stack = ExitStack()
        try:
            self._start(short, service_ms)
        except BaseException:
            self.stack.close()
            raise

    def _start(self, short: Path, service_ms: float) -> None:
        ca = CertificateAuthority.init(self.workdir / "ca")
        gateway = issue(ca, gateway_id(SHARD), self.workdir / "gateway", _LIFETIME)
        self.app = issue(ca, consumer_id("account-app", APP), self.workdir / "app", _LIFETIME)
        self.tls = {"cert": str(self.app["certificate"]), "key": str(self.app["key"]), "ca": str(self.app["bundle"])}
        self.ports = {"envoy": free_port(), "mtls": free_port(), "client-proxy": free_port()}
        dal_ports = {"api": free_port(), "secure_api": free_port()}

        self.server = ServerChild(self.workdir)
        self.server.write_shard(SHARD, _shard(self.ports["envoy"], self.ports["mtls"], dal_ports))
        self.server.start()
        self.stack.callback(self.server.stop)
        self.dal = _dal("thrift", dal_ports, self.workdir, service_ms)
        self.stack.callback(self.dal.stop)
        try:
            self.sds = SdsChild(short / "sds.sock", SHARD, ["metatron"], gateway, self.workdir / "sds.log")
        except (ChildExited, WaitTimeout) as e:
            raise BenchError(str(e)) from None
        self.stack.callback(self.sds.stop)
        try:
            self.envoy = BlockingEnvoy(make_bootstrap(SHARD, "bench-gw", self.server.xds,
                                                      sds_socket=str(short / "sds.sock")),
                                       self.workdir, name="envoy-tls", concurrency=1)  # fmt: skip
            self.stack.callback(self.envoy.stop)
            self.envoy.wait_ready(30)
        except EnvoyError as e:
            raise BenchError(str(e)) from None
        report = {
            "shard": SHARD, "node_id": "bench-gw", "host_address": "127.0.0.1", "registrations": [ADDRESS],
            "endpoints": [{"dal": "thrift", "listener": n, "address": "127.0.0.1", "port": p, "health": "HEALTHY"}
                          for n, p in dal_ports.items()],
        }  # fmt: skip
        wait_for(lambda: self.server.post_report(report), 20, "the server to accept the report")
        self.proxy = Child(
            [sys.executable, "-m", "dgw.cli", "client-proxy", "--shard", SHARD, "--listener", "secure_api",
             "--address", ADDRESS, "--listen", f"127.0.0.1:{self.ports['client-proxy']}", "--xds", self.server.xds,
             "--insecure", "--node-id", "bench-client-proxy",
             "--identity", str(self.app["certificate"]), str(self.app["key"])],
            self.workdir / "client-proxy.log",
        )  # fmt: skip
        self.stack.callback(self.proxy.stop)

        for case, port in self.ports.items():
            wait_for(partial(self._answers, case, port), 30, f"the {case} case answering")

    def _answers(self, case: str, port: int) -> bool:
        """One request on a new connection (a failed one is not reused)."""
        from bench.load import _blocking_call

        self.proxy.check("dgw client-proxy")
        call, close = _blocking_call("http", port, self.tls if case == "mtls" else None)
        try:
            call()
        except Exception:
            return False
        finally:
            close()
        return True

    def close(self) -> None:
        self.stack.close()


def _connections(stack: _Stack, seconds: float, callers: int) -> dict[str, Any]:
    """``callers`` × ``openssl s_time -new`` for ``seconds``: completed handshakes per second."""
    openssl = shutil.which("openssl")
    if openssl is None:
        raise BenchError("openssl is not installed: it opens the new connections (apt-get install openssl)")
    port = stack.ports["mtls"]
    stat = f"listener.127.0.0.1_{port}.ssl.handshake"
    argv = [openssl, "s_time", "-connect", f"127.0.0.1:{port}", "-new", "-time", f"{seconds:g}",
            "-cert", stack.tls["cert"], "-key", stack.tls["key"], "-CAfile", stack.tls["ca"]]  # fmt: skip
    before, cpu_before = stack.envoy.stat(stat), cpu_times(stack.envoy.pid)
    failed_before = stack.envoy.stat(f"listener.127.0.0.1_{port}.ssl.connection_error")
    started = time.monotonic()
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(callers)]
    outputs = []
    try:
        for proc in procs:
            outputs.append(proc.communicate(timeout=seconds + 30)[0])
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
    wall = time.monotonic() - started
    done, cpu_after = stack.envoy.stat(stat) - before, cpu_times(stack.envoy.pid)
    if done == 0:
        raise BenchError(f"no mTLS handshake completed; openssl said:\n{outputs[0][-800:]}")
    cpu_s = sum(cpu_after) - sum(cpu_before)
    return {
        "callers": callers, "seconds": round(wall, 2), "handshakes": done, "per_s": done / wall,
        "envoy_cpu_us_per_handshake": cpu_s / done * 1e6,
        "errors": stack.envoy.stat(f"listener.127.0.0.1_{port}.ssl.connection_error") - failed_before,
    }  # fmt: skip


def _envoy_cpu_per_request(loader: _Loader, stack: _Stack, rate: float, requests: int = 2000) -> dict[str, float]:
    """The gateway Envoy's CPU (user + sys) per request of each case, one case at a
    time: less at the mercy of a busy machine than latency, it shows what TLS + RBAC
    cost the gateway itself (the client proxy's own Envoy is not counted)."""
    out = {}
    for case, port in stack.ports.items():
        before = cpu_times(stack.envoy.pid)
        reply = loader.ask("latency", {
            "protocol": "http", "ports": {case: port}, "rate": max(rate, 1000.0), "block": requests, "rounds": 1,
            "pause": 0.0, "tls": {"mtls": stack.tls},
        }, requests / 100 + 60)  # fmt: skip
        after = cpu_times(stack.envoy.pid)
        out[case] = (sum(after) - sum(before)) / reply["sent"][case] * 1e6
    return out


def measure(args: argparse.Namespace) -> dict[str, Any]:
    workdir = scratch_dir("data-path-tls")
    short = Path(tempfile.mkdtemp(prefix="dgw-bench-"))  # a Unix socket path is ≤ 107 bytes
    hold = ExitStack()
    held = hold.enter_context(quick_wakeups()) if args.quick_wakeups else None
    loader = _Loader()
    stack: _Stack | None = None
    ok = False
    try:
        stack = _Stack(workdir, short, args.service_ms[0])
        seconds = args.rounds * len(CASES) * args.block / args.rate
        note(f"tls: {len(CASES)} cases interleaved, {args.rounds} rounds of {args.block} requests, ~{seconds:.0f}s")
        lat = loader.ask("latency", {
            "protocol": "http", "ports": stack.ports, "rate": args.rate, "block": args.block,
            "rounds": args.rounds, "pause": 0.05, "tls": {"mtls": stack.tls},
        }, seconds * 2 + args.rounds * len(CASES) * 0.05 + 120)  # fmt: skip
        cpu_us = _envoy_cpu_per_request(loader, stack, args.rate)
        note(f"tls: new mTLS connections, {args.tls_callers} openssl s_time callers for {args.tls_seconds:g}s")
        connections = _connections(stack, args.tls_seconds, args.tls_callers)
        base = pooled(lat["latencies_ms"]["envoy"])
        rows = []
        for case in CASES:
            values = pooled(lat["latencies_ms"][case])
            rows.append({
                "case": case, "requests": len(values), "p50_ms": percentile(values, 50),
                "p99_ms": percentile(values, 99),
                "p50_added_ms": percentile(values, 50) - percentile(base, 50),
                "p99_added_ms": percentile(values, 99) - percentile(base, 99),
                "errors": lat["errors"][case], "gateway_cpu_us": cpu_us[case],
            })  # fmt: skip
        ok = True
        return {"rows": rows, "connections": connections, "cpu_dma_latency_us": held}
    finally:
        hold.close()
        loader.stop(graceful=ok)
        if stack is not None:
            stack.close()
        shutil.rmtree(short, ignore_errors=True)
        finish_scratch_dir(workdir, ok)


def main(args: argparse.Namespace) -> int:
    data = measure(args)
    rows, connections = data["rows"], data["connections"]
    mtls = next(r for r in rows if r["case"] == "mtls")
    checks = [
        {"target": f"mTLS + RBAC add ≤ {P50_ADDED_TARGET_MS:g} ms at p50 (kept-alive connection)",
         "value": mtls["p50_added_ms"], "ok": mtls["p50_added_ms"] <= P50_ADDED_TARGET_MS},
        {"target": "no failed requests or handshakes",
         "value": sum(r["errors"] for r in rows) + connections["errors"],
         "ok": all(r["errors"] == 0 for r in rows) and connections["errors"] == 0},
    ]  # fmt: skip
    result = {
        "figure": "data-path-tls",
        "command": f"dgw bench data-path --tls --rate {args.rate:g} --block {args.block} --rounds {args.rounds} "
                   f"--service-ms {args.service_ms[0]:g} --tls-seconds {args.tls_seconds:g} "
                   f"--tls-callers {args.tls_callers}" + ("" if args.quick_wakeups else " --let-cpus-sleep"),
        "machine": machine(),
        "note": "client (Python, TLS in the client included in 'mtls'), Envoy (1 worker), client proxy Envoy, "
                "the Python sample DAL and openssl share the machine's cores",
        "cpu_dma_latency_us": data["cpu_dma_latency_us"],
        "rows": rows,
        "connections": connections,
        "targets": checks,
    }  # fmt: skip
    if args.save:
        save_json(args.name or "data-path-tls", result, args.out)
    text = table(rows, ["case", "requests", "p50_ms", "p99_ms", "p50_added_ms", "p99_added_ms", "errors",
                        "gateway_cpu_us"],
                 "data-path --tls: latency on a kept-alive connection (paced, cases interleaved), added vs envoy; "
                 "gateway Envoy CPU per request")  # fmt: skip
    text += (f"\n  new mTLS connections: {connections['per_s']:.0f}/s through one Envoy "
             f"({connections['handshakes']} handshakes in {connections['seconds']}s, {connections['callers']} "
             f"callers; Envoy CPU {connections['envoy_cpu_us_per_handshake']:.0f} µs per handshake)")  # fmt: skip
    for c in checks:
        text += f"\n  {'PASS' if c['ok'] else 'FAIL'}  {c['target']}  (measured {c['value']:.3g})"
    emit(result, text, args.json)
    return 0 if all(c["ok"] for c in checks) else 1
