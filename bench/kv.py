"""``dgw bench kv``: the Key-Value DAL through the gateway against asyncpg direct.

What runs, all on loopback: a ``dgw server`` child; one KV DAL child (``python -m
dals.kv serve``) on PostgreSQL (127.0.0.1:5432, a schema of its own, dropped after)
with two namespaces, ``bench`` (no cache) and ``bench_cached`` (the Redis look-aside
cache, a private ``redis-server`` on a free port); one gateway Envoy (``--concurrency
1``) whose ``secure_grpc`` listener is mTLS + RBAC (certificates over SDS from a scratch
CA; the consumer ``bench-client`` read-write); a load generator process
(``bench/kv_load.py``).

Load: open loop at ``--rate`` requests a second, 80 % GetItems and 20 % PutItems of
1 KiB values over ``--records`` records (filled first; the cached namespace read once,
so its cache is warm). Cases, interleaved in blocks of ``--block`` seconds, their order
rotating, ``--rounds`` times (a noisy minute of the shared machine falls on all):

- ``direct``: the same reads and writes made with asyncpg on the DAL's tables (no DAL,
  no Envoy, no TLS);
- ``gateway``: gRPC over mTLS through Envoy to the DAL, on PostgreSQL;
- ``gateway-cached``: the same in the cached namespace.

Then the highest rate that holds p99 ≤ 25 ms through the gateway: ``--sweep`` rates,
``--block`` seconds each, until one misses. CPU per request (``/proc``, all threads) of
the DAL, Envoy, the PostgreSQL backends serving each case and Redis, over the blocks of
each case. ``--profile S`` samples the DAL with py-spy for S seconds of gateway load
and prints where its time goes.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import datetime as dt
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from contextlib import ExitStack
from functools import partial
from pathlib import Path
from typing import Any

from bench.data_path import _Loader
from bench.idle import quick_wakeups
from bench.kv_load import load_main
from bench.procs import (
    BenchError,
    Child,
    ServerChild,
    cpu_seconds,
    finish_scratch_dir,
    http_json,
    scratch_dir,
    wait_for,
)
from bench.report import emit, machine, note, percentile, save_json, table
from bench.stats import pooled
from common.files import write_private
from envoy_proxy import BlockingEnvoy, EnvoyError, make_bootstrap
from testkit.ports import free_port
from testkit.procs import ChildExited
from testkit.redis import RedisServer
from testkit.sds import SdsChild
from testkit.wait import WaitTimeout
from xds_server.security.ca import CertificateAuthority
from xds_server.security.identity import consumer_id, gateway_dns_name, gateway_id
from xds_server.security.keys import make_csr, new_private_key, private_key_pem

SHARD, ADDRESS, APP = "kv-bench", "kv-bench.bench", "bench-client"
DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
CASES = ("direct", "gateway", "gateway-cached")
TARGET_P99_MS = 10.0
TARGET_P50_ADDED_MS = 1.5
TARGET_CACHED_GET_P99_MS = 3.0
SWEEP_P99_MS = 25.0
_LIFETIME = dt.timedelta(hours=2)


def _kv_config(schema: str, redis_url: str, prefix: str) -> str:
    return json.dumps({
        "engines": {"pg": {"kind": "postgres", "dsn": DSN, "schema": schema, "pool_size": 8}},
        "cache": {"url": redis_url, "prefix": prefix},
        "namespaces": {"bench": {"engine": "pg"}, "bench_cached": {"engine": "pg", "cache_ttl_s": 300}},
    })  # fmt: skip


def _shard(grpc_port: int, dal: dict[str, int]) -> str:
    return json.dumps({
        "proxy_config": {"public_listeners": {
            "secure_grpc": {"mode": "grpc", "path": grpc_port, "tls_creds": "metatron", "authz": "gandalf"}}},
        "container_dals": {"kv": {"container_listeners": dal}},
        "registrations": [{"address": ADDRESS}],
        "deploy_desires": {"consumers": [{"type": "account-app", "value": APP, "group": "read-write"}]},
    })  # fmt: skip


def _files(ca: CertificateAuthority, names: list[Any], out: Path) -> dict[str, Path]:
    """A key and certificate with exactly these SANs (a gateway's carries its DNS name
    too, which a gRPC client checks), with the CA's bundle, as `dgw ca issue` lays them out."""
    key = new_private_key()
    out.mkdir(parents=True, exist_ok=True)
    paths = {"certificate": out / "cert.pem", "key": out / "key.pem", "bundle": out / "bundle.pem"}
    write_private(paths["key"], private_key_pem(key))
    paths["certificate"].write_bytes(ca.issue(key.public_key(), names, _LIFETIME))
    paths["bundle"].write_bytes(ca.bundle_pem)
    return paths


class _Stack:
    def __init__(self, workdir: Path, short: Path) -> None:
        self.workdir = workdir
        self.stack = ExitStack()
        try:
            self._start(short)
        except BaseException:
            self.stack.close()
            raise

    def _start(self, short: Path) -> None:
        from cryptography import x509

        ca = CertificateAuthority.init(self.workdir / "ca")
        gateway = _files(ca, [x509.UniformResourceIdentifier(gateway_id(SHARD).uri),
                              x509.DNSName(gateway_dns_name(SHARD))], self.workdir / "gateway")  # fmt: skip
        app_id = consumer_id("account-app", APP)
        make_csr(new_private_key(), app_id)  # the identity is valid (raises otherwise)
        app = _files(ca, [x509.UniformResourceIdentifier(app_id.uri)], self.workdir / "app")
        self.tls = {"cert": str(app["certificate"]), "key": str(app["key"]), "ca": str(app["bundle"])}
        self.schema = f"kv_bench_{secrets.token_hex(4)}"
        self.stack.callback(_drop_schema, self.schema)

        self.redis = RedisServer(self.workdir).start()
        self.stack.callback(self.redis.stop)
        self.grpc_port = free_port()
        self.dal_ports = {"secure_grpc": free_port(), "api": free_port()}
        env = {"KV_CONFIG": _kv_config(self.schema, self.redis.url, "bench:"), "DGW_DAL_NAME": "kv",
               "KV_LOG_LEVEL": "WARNING", **{f"DGW_LISTENER_{k.upper()}_PORT": str(v) for k, v in self.dal_ports.items()}}  # fmt: skip
        self.dal = Child([sys.executable, "-m", "dals.kv", "serve"], self.workdir / "kv-dal.log", env)
        self.stack.callback(self.dal.stop)
        for port in self.dal_ports.values():
            wait_for(partial(self.dal.serving, port, "the KV DAL"), 60, f"the KV DAL on port {port}")

        self.server = ServerChild(self.workdir)
        self.server.write_shard(SHARD, _shard(self.grpc_port, self.dal_ports))
        self.server.start()
        self.stack.callback(self.server.stop)
        try:
            self.sds = SdsChild(short / "sds.sock", SHARD, ["metatron"], gateway, self.workdir / "sds.log")
        except (ChildExited, WaitTimeout) as e:
            raise BenchError(str(e)) from None
        self.stack.callback(self.sds.stop)
        try:
            self.envoy = BlockingEnvoy(make_bootstrap(SHARD, "bench-gw", self.server.xds,
                                                      sds_socket=str(short / "sds.sock")),
                                       self.workdir, name="envoy-kv", concurrency=1)  # fmt: skip
            self.stack.callback(self.envoy.stop)
            self.envoy.wait_ready(30)
        except EnvoyError as e:
            raise BenchError(str(e)) from None
        report = {
            "shard": SHARD, "node_id": "bench-gw", "host_address": "127.0.0.1", "registrations": [ADDRESS],
            "endpoints": [{"dal": "kv", "listener": n, "address": "127.0.0.1", "port": p, "health": "HEALTHY"}
                          for n, p in self.dal_ports.items()],
        }  # fmt: skip
        wait_for(lambda: self.server.post_report(report), 20, "the server to accept the report")

    def dal_stats(self) -> dict[str, Any]:
        return http_json(f"http://127.0.0.1:{self.dal_ports['api']}/stats")

    def close(self) -> None:
        self.stack.close()


def _drop_schema(schema: str) -> None:
    import asyncpg

    async def drop() -> None:
        conn = await asyncpg.connect(DSN, timeout=10)
        try:
            await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        finally:
            await conn.close()

    asyncio.run(drop())


async def _fill(port: int, records: int) -> None:
    """Every record in both namespaces, the cached one read once (a warm cache)."""
    from dals.kv.client import KvClient

    client = KvClient.connect(f"127.0.0.1:{port}")
    try:
        value = os.urandom(1024)
        for ns in ("bench", "bench_cached"):
            for start in range(0, records, 50):
                await asyncio.gather(*(client.put(ns, f"rec-{i:05d}", {b"v": value})
                                       for i in range(start, min(start + 50, records))))  # fmt: skip
        for start in range(0, records, 50):
            await asyncio.gather(*(client.get("bench_cached", f"rec-{i:05d}") for i in range(start, min(start + 50, records))))
    finally:
        await client.close()


def _backends() -> dict[str, dict[int, float]]:
    """CPU seconds so far of every PostgreSQL backend, by its application name: the pools
    open and close connections while they run, so backends are listed at every reading."""
    import asyncpg

    async def pids() -> list[tuple[str, int]]:
        conn = await asyncpg.connect(DSN, timeout=10)
        try:
            return [(r[0], r[1]) for r in await conn.fetch(
                "SELECT application_name, pid FROM pg_stat_activity WHERE application_name IN ('dals.kv', 'bench-direct')")]  # fmt: skip
        finally:
            await conn.close()

    out: dict[str, dict[int, float]] = {"dals.kv": {}, "bench-direct": {}}
    for app, pid in asyncio.run(pids()):
        out[app][pid] = _cpu([pid])
    return out


def _cpu(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            total += cpu_seconds(pid)
        except (OSError, IndexError):
            pass  # a backend that went away
    return total


def _summary(values: list[float]) -> dict[str, float]:
    return {"p50_ms": percentile(values, 50), "p99_ms": percentile(values, 99), "max_ms": max(values, default=0.0)}


def _profile(stack: _Stack, loader: _Loader, args: argparse.Namespace, out: Path | None) -> dict[str, Any]:
    """py-spy on the DAL during ``--profile`` seconds of gateway load: the functions
    where its samples end (self time), by share."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        raise BenchError("--profile needs py-spy (pip install py-spy)")
    raw = stack.workdir / "kv-dal.pyspy.txt"
    proc = subprocess.Popen([spy, "record", "-p", str(stack.dal.pid), "-d", str(int(args.profile)), "-r", "250",
                             "-f", "raw", "-o", str(raw), "--nonblocking"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        loader.ask("block", {"case": "gateway", "rate": args.rate, "seconds": args.profile, "seed": 99},
                   args.profile * 3 + 60)  # fmt: skip
        output = proc.communicate(timeout=args.profile + 60)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    if not raw.exists():
        raise BenchError(f"py-spy wrote no profile: {output[-500:]}")
    own: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack_text, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        leaf = stack_text.split(";")[-1]
        own[leaf.split(" (")[0] + " (" + leaf.split("(")[-1].split(":")[0].rsplit("/", 1)[-1] + ")" if "(" in leaf else leaf] += int(count)
        total += int(count)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        shutil.copy(raw, out / "kv-dal.pyspy.txt")
    return {"samples": total, "top": [{"function": f, "share_pct": 100 * n / total} for f, n in own.most_common(15)]}


def measure(args: argparse.Namespace) -> dict[str, Any]:
    workdir = scratch_dir("kv")
    short = Path(tempfile.mkdtemp(prefix="dgw-bench-"))  # a Unix socket path is ≤ 107 bytes
    hold = ExitStack()
    held = hold.enter_context(quick_wakeups()) if args.quick_wakeups else None
    loader = _Loader(load_main, "kv-load")
    stack: _Stack | None = None
    ok = False
    try:
        stack = _Stack(workdir, short)
        note(f"kv: filling {args.records} records in both namespaces")
        asyncio.run(_fill(stack.dal_ports["secure_grpc"], args.records))
        loader.ask("prepare", {"target": f"127.0.0.1:{stack.grpc_port}", "tls": stack.tls,
                                          "server_name": gateway_dns_name(SHARD), "dsn": DSN, "schema": stack.schema,
                                          "records": args.records}, 60)  # fmt: skip
        pg_app = {"direct": "bench-direct", "gateway": "dals.kv", "gateway-cached": "dals.kv"}
        for case in CASES:  # warm every path (connections, Envoy's pool, prepared statements)
            loader.ask("block", {"case": case, "rate": 100, "seconds": 1, "seed": 7}, 60)
        note(f"kv: {len(CASES)} cases interleaved, {args.rounds} rounds of {args.block:g}s at {args.rate:g}/s")
        rounds: dict[str, dict[str, list[list[float]]]] = {c: {"get": [], "put": [], "all": []} for c in CASES}
        errors = {c: 0 for c in CASES}
        dropped = {c: 0 for c in CASES}
        sent = {c: 0 for c in CASES}
        cpu: dict[str, dict[str, float]] = {c: collections.defaultdict(float) for c in CASES}
        redis_pids = [stack.redis.child.pid] if stack.redis.child else []
        loader_pid = loader.proc.pid or 0

        def parts(case: str) -> dict[str, Any]:
            return {"dal": _cpu([stack.dal.pid]), "envoy": _cpu([stack.envoy.pid]), "postgres": _backends()[pg_app[case]],
                    "redis": _cpu(redis_pids), "generator": _cpu([loader_pid])}  # fmt: skip

        cache_before = stack.dal_stats().get("cache", {})
        for r in range(args.rounds):
            for case in CASES[r % len(CASES):] + CASES[:r % len(CASES)]:
                before = parts(case)
                reply = loader.ask("block", {"case": case, "rate": args.rate, "seconds": args.block, "seed": r},
                                   args.block * 4 + 60)  # fmt: skip
                after = parts(case)
                for part in before:
                    if part == "postgres":  # a backend that came meanwhile counts from its start
                        cpu[case][part] += sum(t - before[part].get(pid, 0.0) for pid, t in after[part].items())
                    else:
                        cpu[case][part] += after[part] - before[part]
                for op in ("get", "put"):
                    rounds[case][op].append(reply["latencies_ms"][op])
                rounds[case]["all"].append(reply["latencies_ms"]["get"] + reply["latencies_ms"]["put"])
                errors[case] += reply["errors"]
                dropped[case] += reply["dropped"]
                sent[case] += reply["sent"]
                if reply["errors"]:
                    note(f"kv: {case} errors: {reply['error_sample']}")
        cache_after = stack.dal_stats().get("cache", {})
        rows: list[dict[str, Any]] = []
        for case in CASES:
            for op in ("all", "get", "put"):
                values = pooled(rounds[case][op])
                rows.append({"case": case, "op": op, "requests": len(values), **_summary(values),
                             "errors": errors[case] if op == "all" else 0,
                             "dropped": dropped[case] if op == "all" else 0})  # fmt: skip
            for part, seconds in cpu[case].items():
                rows[-3][f"{part}_cpu_us"] = seconds / max(sent[case], 1) * 1e6
        hits = cache_after.get("hits", 0) - cache_before.get("hits", 0)
        misses = cache_after.get("misses", 0) - cache_before.get("misses", 0)

        sweep = []
        if args.sweep:
            note(f"kv: rate sweep through the gateway, {args.block:g}s each: {','.join(f'{x:g}' for x in args.sweep)}")
            for rate in args.sweep:
                spent = _cpu([stack.dal.pid]) + _cpu([stack.envoy.pid])
                reply = loader.ask("block", {"case": "gateway", "rate": rate, "seconds": args.block, "seed": 1000 + int(rate)},
                                   args.block * 6 + 60)  # fmt: skip
                used = _cpu([stack.dal.pid]) + _cpu([stack.envoy.pid]) - spent
                values = reply["latencies_ms"]["get"] + reply["latencies_ms"]["put"]
                point = {"rate": rate, "achieved": len(values) / reply["wall_s"], **_summary(values),
                         "errors": reply["errors"] + reply["dropped"], "dal_envoy_cpu_pct": 100 * used / reply["wall_s"]}  # fmt: skip
                sweep.append(point)
                note(f"kv: {rate:g}/s → p99 {point['p99_ms']:.1f} ms, {point['errors']} errors")
                if point["p99_ms"] > SWEEP_P99_MS or point["errors"] > 0.01 * reply["sent"]:
                    break
        profile = _profile(stack, loader, args, args.out if args.save else None) if args.profile else None
        ok = True
        return {"rows": rows, "sweep": sweep, "cache": {"hits": hits, "misses": misses}, "profile": profile,
                "cpu_dma_latency_us": held}  # fmt: skip
    finally:
        hold.close()
        loader.stop(graceful=ok)
        if stack is not None:
            stack.close()
        shutil.rmtree(short, ignore_errors=True)
        finish_scratch_dir(workdir, ok)


def main(args: argparse.Namespace) -> int:
    data = measure(args)
    rows, sweep = data["rows"], data["sweep"]

    def row(case: str, op: str) -> dict[str, Any]:
        return next(r for r in rows if r["case"] == case and r["op"] == op)

    gateway, direct, cached_get = row("gateway", "all"), row("direct", "all"), row("gateway-cached", "get")
    added = gateway["p50_ms"] - direct["p50_ms"]
    holding = [p["rate"] for p in sweep if p["p99_ms"] <= SWEEP_P99_MS and p["errors"] == 0]
    checks = [
        {"target": f"p99 at {args.rate:g}/s through the gateway ≤ {TARGET_P99_MS:g} ms", "value": gateway["p99_ms"],
         "ok": gateway["p99_ms"] <= TARGET_P99_MS},
        {"target": f"added p50 over direct asyncpg ≤ {TARGET_P50_ADDED_MS:g} ms", "value": added,
         "ok": added <= TARGET_P50_ADDED_MS},
        {"target": f"warm-cache GetItems p99 ≤ {TARGET_CACHED_GET_P99_MS:g} ms", "value": cached_get["p99_ms"],
         "ok": cached_get["p99_ms"] <= TARGET_CACHED_GET_P99_MS},
        {"target": "no failed or dropped requests", "value": sum(r["errors"] + r["dropped"] for r in rows),
         "ok": all(r["errors"] == 0 and r["dropped"] == 0 for r in rows)},
    ]  # fmt: skip
    result = {
        "figure": "kv",
        "command": f"dgw bench kv --rate {args.rate:g} --block {args.block:g} --rounds {args.rounds} "
                   f"--records {args.records} --sweep {','.join(f'{x:g}' for x in args.sweep)}"
                   + (f" --profile {args.profile:g}" if args.profile else "")
                   + ("" if args.quick_wakeups else " --let-cpus-sleep"),
        "machine": machine(),
        "note": "the load generator (Python, asyncio, gRPC with TLS), Envoy (1 worker), the KV DAL (Python), "
                "PostgreSQL and Redis share the machine's cores",
        "cpu_dma_latency_us": data["cpu_dma_latency_us"],
        "rows": rows,
        "cache": data["cache"],
        "sweep": sweep,
        "max_rate_p99_25ms": max(holding, default=0.0),
        "profile": data["profile"],
        "targets": checks,
    }  # fmt: skip
    if args.save:
        save_json(args.name or "kv", result, args.out)
    text = table(rows, ["case", "op", "requests", "p50_ms", "p99_ms", "max_ms", "errors", "dropped", "dal_cpu_us",
                        "envoy_cpu_us", "postgres_cpu_us", "redis_cpu_us", "generator_cpu_us"],
                 f"kv: open loop at {args.rate:g}/s, 80 % GetItems / 20 % PutItems of 1 KiB, cases interleaved; "
                 "CPU µs per request of each part")  # fmt: skip
    cache = data["cache"]
    text += f"\n  cache (gateway-cached): {cache['hits']} hits, {cache['misses']} misses"
    if sweep:
        text += "\n" + table(sweep, ["rate", "achieved", "p50_ms", "p99_ms", "max_ms", "errors", "dal_envoy_cpu_pct"],
                             "rate sweep through the gateway")  # fmt: skip
        text += f"\n  highest rate holding p99 ≤ {SWEEP_P99_MS:g} ms: {result['max_rate_p99_25ms']:g}/s"
    if data["profile"]:
        text += f"\n  the DAL's time (py-spy, {data['profile']['samples']} samples, self time):"
        for entry in data["profile"]["top"]:
            text += f"\n    {entry['share_pct']:5.1f} %  {entry['function']}"
    for c in checks:
        text += f"\n  {'PASS' if c['ok'] else 'FAIL'}  {c['target']}  (measured {c['value']:.3g})"
    emit(result, text, args.json)
    return 0 if all(c["ok"] for c in checks) else 1
