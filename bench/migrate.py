"""``dgw bench migrate``: the migration runner's two figures (issue #20).

- **Backfill items/s**, SQLite → PostgreSQL, values of ``--value-bytes`` (1 KiB), no
  live traffic: a source KV DAL child on SQLite holds ``--items`` items (10 per record),
  and each of ``--rounds`` rounds copies them with ``run_backfill`` (this process, the
  runner) into a fresh target KV DAL child on PostgreSQL (a schema of its own, dropped
  after). Reported per round: items/s, MB/s and the CPU seconds per 10,000 items of the
  source DAL, the target DAL and the runner (PostgreSQL's own backends are not counted).
- **Verify** of ``--verify-items`` items (1,000,000) with 10 planted differences: the
  same items imported into both DALs (namespace ``verify``), then in the target's
  tables 4 items deleted, 3 values changed under their version and 3 extra records
  inserted; ``run_verify`` must name all 10. Reported: seconds, and whether each planted
  key was named.

Everything runs on this machine's 2 cores (the DALs, PostgreSQL and the runner share
them): the figures are ranges over rounds, with the CPU per unit of work beside them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from functools import partial
from pathlib import Path
from typing import Any

from bench.kv import DSN, _drop_schema
from bench.procs import BenchError, cpu_seconds, finish_scratch_dir, scratch_dir, wait_for
from bench.report import emit, machine, note, save_json, table
from dgw.migrate.backfill import BackfillOptions, run_backfill
from dgw.migrate.dal_client import DalClient, DalError
from dgw.migrate.state import MemoryState
from dgw.migrate.verify import VerifyOptions, run_verify
from dgw_api.migration.v1 import migration_pb2 as pb
from testkit.ports import free_port
from testkit.procs import Child

GOAL_ITEMS_PER_S = 10_000
GOAL_VERIFY_S = 60.0
ITEMS_PER_RECORD = 10
WRITER = bytes(range(16))
BASE_TIME_US = 1_700_000_000_000_000


class _Dal:
    def __init__(
        self, name: str, engine: dict[str, object], workdir: Path, stack: ExitStack
    ) -> None:
        self.port = free_port()
        config = {
            "engines": {"main": engine},
            "namespaces": {"bench": {"engine": "main"}, "verify": {"engine": "main"}},
        }
        env = {"KV_CONFIG": json.dumps(config), "DGW_DAL_NAME": name, "KV_LOG_LEVEL": "WARNING",
               "DGW_LISTENER_RPC_GRPC_PORT": str(self.port)}  # fmt: skip
        self.child = Child([sys.executable, "-m", "dals.kv", "serve"], workdir / f"{name}.log", env)
        stack.callback(self.child.stop)
        wait_for(
            partial(self.child.serving, self.port, f"KV DAL {name}"),
            60,
            f"KV DAL {name} on {self.port}",
        )

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"


def _record_id(i: int) -> str:
    return f"user-{i // ITEMS_PER_RECORD:08}"


def _pages(items: int, value_bytes: int, per_page: int = 1000) -> Iterator[bytes]:
    """``items`` items as ExportPages of ``per_page``: 10 items per record, distinct values
    and versions."""
    filler = os.urandom(value_bytes)
    for first in range(0, items, per_page):
        page = pb.ExportPage()
        record = None
        for i in range(first, min(first + per_page, items)):
            rid = _record_id(i)
            if record is None or record.id != rid:
                record = page.records.add(id=rid)
            record.items.add(key=f"k{i % ITEMS_PER_RECORD}".encode(), value=i.to_bytes(8, "big") + filler[8:],
                             write_time_us=BASE_TIME_US + i, writer=WRITER)  # fmt: skip
        yield page.SerializeToString()


async def _fill(targets: list[str], namespace: str, items: int, value_bytes: int) -> None:
    clients = [DalClient(t) for t in targets]
    try:
        pending: list[asyncio.Task[Any]] = []
        for n, page in enumerate(_pages(items, value_bytes)):
            pending += [asyncio.create_task(c.import_page(namespace, page)) for c in clients]
            if len(pending) >= 4 * len(clients):
                await asyncio.gather(*pending)
                pending = []
            if n % 100 == 0:
                note(f"migrate: filled {n * 1000} of {items} items in {namespace}")
        await asyncio.gather(*pending)
    finally:
        for c in clients:
            await c.close()


async def _plant(schema: str, items: int) -> list[tuple[str, bytes, str]]:
    """Ten differences in the target's own tables: what verify must name."""
    import asyncpg

    step = items // 8
    missing = [step * k + 3 for k in range(1, 5)]
    changed = [step * k + 5 for k in range(5, 8)]
    planted = [(_record_id(i), f"k{i % ITEMS_PER_RECORD}".encode(), "missing") for i in missing]
    planted += [(_record_id(i), f"k{i % ITEMS_PER_RECORD}".encode(), "changed") for i in changed]
    planted += [(f"stray-{k}", b"k", "extra") for k in range(3)]
    conn = await asyncpg.connect(DSN, timeout=10)
    try:
        for rid, key, kind in planted:
            if kind == "missing":
                await conn.execute(f"DELETE FROM {schema}.items WHERE namespace = 'verify' AND id = $1 AND key = $2",
                                   rid, key)  # fmt: skip
            elif kind == "changed":
                await conn.execute(f"UPDATE {schema}.items SET value = 'damaged' WHERE namespace = 'verify' "
                                   "AND id = $1 AND key = $2", rid, key)  # fmt: skip
            else:
                await conn.execute(f"INSERT INTO {schema}.items VALUES ('verify', $1, $2, 'x', 1, 0, $3, $4)",
                                   rid, key, BASE_TIME_US, WRITER)  # fmt: skip
    finally:
        await conn.close()
    return planted


def _backfill_round(
    source: _Dal, workdir: Path, r: int, args: argparse.Namespace, stack: ExitStack
) -> dict[str, Any]:
    schema = f"kv_bench_mig_{secrets.token_hex(4)}"
    inner = ExitStack()
    inner.callback(_drop_schema, schema)
    try:
        target = _Dal(
            f"target-{r}",
            {"kind": "postgres", "dsn": DSN, "schema": schema, "pool_size": 4},
            workdir,
            inner,
        )
        cpu = {"source": cpu_seconds(source.child.pid), "target": cpu_seconds(target.child.pid),
               "runner": time.process_time()}  # fmt: skip
        options = BackfillOptions(namespaces=["bench"], page_size_bytes=args.page_bytes)
        result = asyncio.run(
            run_backfill(source.target, target.target, MemoryState(), options, progress=False)
        )
        spent = {"source": cpu_seconds(source.child.pid) - cpu["source"],
                 "target": cpu_seconds(target.child.pid) - cpu["target"],
                 "runner": time.process_time() - cpu["runner"]}  # fmt: skip
        if not result.done or result.items != args.items:
            raise BenchError(f"round {r}: the backfill copied {result.items} of {args.items} items")
        per = 10_000 / result.items
        return {"round": r + 1, "items": result.items, "seconds": result.seconds, "items_per_s": result.items_per_s,
                "mb_per_s": result.bytes / result.seconds / 1e6, "source_cpu_s_per_10k": spent["source"] * per,
                "target_cpu_s_per_10k": spent["target"] * per, "runner_cpu_s_per_10k": spent["runner"] * per}  # fmt: skip
    finally:
        inner.close()


def _verify(
    source: _Dal, workdir: Path, args: argparse.Namespace, stack: ExitStack
) -> dict[str, Any]:
    schema = f"kv_bench_ver_{secrets.token_hex(4)}"
    stack.callback(_drop_schema, schema)
    target = _Dal(
        "verify-target", {"kind": "postgres", "dsn": DSN, "schema": schema}, workdir, stack
    )
    note(
        f"migrate: filling {args.verify_items} items of {args.value_bytes} B into both DALs (namespace verify)"
    )
    started = time.monotonic()
    asyncio.run(
        _fill([source.target, target.target], "verify", args.verify_items, args.value_bytes)
    )
    note(
        f"migrate: filled in {time.monotonic() - started:.0f} s; planting 10 differences in the target"
    )
    planted = asyncio.run(_plant(schema, args.verify_items))
    rows = []
    for r in range(args.verify_rounds):
        report = asyncio.run(run_verify(source.target, target.target, None,
                                        VerifyOptions(namespaces=["verify"]), progress=False))  # fmt: skip
        found = {(d.record_id, d.key, d.kind) for d in report.found}
        named = sum((rid, key, kind) in found for rid, key, kind in planted)
        rows.append({"round": r + 1, "items": args.verify_items, "seconds": report.seconds, "planted": len(planted),
                     "named": named, "reported": report.differences})  # fmt: skip
        note(f"migrate: verify round {r + 1}: {report.seconds:.1f} s, {named}/{len(planted)} named")
    return {
        "rows": rows,
        "planted": [f"{rid}/{key.decode()} ({kind})" for rid, key, kind in planted],
    }


def main(args: argparse.Namespace) -> int:
    workdir = scratch_dir("migrate")
    stack = ExitStack()
    ok = False
    try:
        source = _Dal(
            "source", {"kind": "sqlite", "path": str(workdir / "source.sqlite3")}, workdir, stack
        )
        backfill_rows: list[dict[str, Any]] = []
        if args.items:
            note(
                f"migrate: filling {args.items} items of {args.value_bytes} B into the source (SQLite)"
            )
            asyncio.run(_fill([source.target], "bench", args.items, args.value_bytes))
            for r in range(args.rounds):
                backfill_rows.append(_backfill_round(source, workdir, r, args, stack))
                note(
                    f"migrate: backfill round {r + 1}: {backfill_rows[-1]['items_per_s']:.0f} items/s"
                )
        verify = (
            _verify(source, workdir, args, stack)
            if args.verify_items
            else {"rows": [], "planted": []}
        )
        ok = True
    except DalError as e:
        raise BenchError(str(e)) from None
    finally:
        stack.close()
        finish_scratch_dir(workdir, ok)
    command = (f"dgw bench migrate --items {args.items} --rounds {args.rounds} --verify-items {args.verify_items} "
               f"--verify-rounds {args.verify_rounds} --value-bytes {args.value_bytes} --page-bytes {args.page_bytes}")  # fmt: skip
    rates = [row["items_per_s"] for row in backfill_rows]
    result = {"figure": "migrate", "command": command, "machine": machine(),
              "note": "source DAL (SQLite), target DAL (PostgreSQL), PostgreSQL and the runner share 2 cores",
              "backfill": backfill_rows, "verify": verify["rows"], "planted": verify["planted"],
              "goals": {"backfill_items_per_s": GOAL_ITEMS_PER_S, "verify_s": GOAL_VERIFY_S}}  # fmt: skip
    if args.save:
        save_json(args.name or "migrate", result, args.out)
    text = ""
    if backfill_rows:
        text += table(backfill_rows, ["round", "items", "seconds", "items_per_s", "mb_per_s", "source_cpu_s_per_10k",
                                      "target_cpu_s_per_10k", "runner_cpu_s_per_10k"],
                      f"backfill SQLite → PostgreSQL, {args.value_bytes} B values, no live traffic "
                      f"(goal ≥ {GOAL_ITEMS_PER_S} items/s): {min(rates):.0f}–{max(rates):.0f} items/s")  # fmt: skip
    if verify["rows"]:
        text += "\n\n" + table(verify["rows"], ["round", "items", "seconds", "planted", "named", "reported"],
                               f"verify with 10 planted differences (goal ≤ {GOAL_VERIFY_S:g} s, all named)")  # fmt: skip
    emit(result, text, args.json)
    good = all(r["named"] == r["planted"] for r in verify["rows"])
    return 0 if good else 1
