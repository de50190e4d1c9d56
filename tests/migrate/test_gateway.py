"""Migrations on real parts (``world``): Envoy, the KV DALs on SQLite and PostgreSQL,
``dgw migrate`` as an operator runs it.

- THE acceptance: a whole migration thrift (SQLite) → cql (PostgreSQL) under a steady,
  bounded read + write load through the gateway: start → backfill → verify →
  progressive promote → finish; zero failed client requests; every key written
  (including those overwritten while the backfill ran) is in cql as last acknowledged;
  the client's p99 per phase is printed;
- a progressive promotion to a DAL that answers errors halts at its first step and
  rolls back by itself, saying which figure failed and by how much; the clients'
  errors stay within that step's share;
- a rollback after a promotion: every write made while promoted is in the old engine;
- ``kill -9`` of ``dgw migrate backfill`` midway: run again it is refused while the dead
  runner's lease lasts (one line), taken over it completes; nothing older over newer.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field

import pytest

from dals.kv.client import KvCallError, KvClient
from dals.kv.tokens import new_token
from dals.kv.v1 import kv_pb2
from tests.migrate.world import M, World, answers, world  # noqa: F401 (the fixture)

pytestmark = [pytest.mark.envoy, pytest.mark.postgres, pytest.mark.slow]

VALUE = 1024  # bytes per value, as the benchmark


def value(tag: str) -> bytes:
    return (tag.encode() + b":") * (VALUE // (len(tag) + 1)) + b"."


@dataclass
class Load:
    """A bounded, steady read + write load through the gateway: ``workers`` loops,
    each writing its own keys (so the last acknowledged write of a key is known) and
    reading any key, ``rate`` requests/s in all, at most ``limit_s`` seconds."""

    client: KvClient
    keys: list[str]
    rate: float = 60.0
    workers: int = 4
    write_share: float = 0.4
    limit_s: float = 240.0
    phase: str = "before"
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    requests: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    failures: list[str] = field(default_factory=list)
    errors_by_phase: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    acked: dict[str, tuple[bytes, kv_pb2.IdempotencyToken]] = field(default_factory=dict)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        await asyncio.gather(*(self._worker(w) for w in range(self.workers)))

    async def _worker(self, w: int) -> None:
        mine = [k for i, k in enumerate(self.keys) if i % self.workers == w]
        rng = random.Random(w)
        interval = self.workers / self.rate
        end = time.monotonic() + self.limit_s
        n = 0
        while not self.stop.is_set() and time.monotonic() < end:
            n += 1
            phase = self.phase
            began = time.monotonic()
            try:
                if rng.random() < self.write_share:
                    key = rng.choice(mine)
                    data, token = value(f"{key}-{w}-{n}"), new_token()
                    await self.client.put("gw", key, {b"v": data}, token)
                    self.acked[key] = (data, token)
                else:
                    await self.client.get("gw", rng.choice(self.keys))
            except KvCallError as e:
                self.failures.append(f"{phase}: {e}")
                self.errors_by_phase[phase] += 1
            self.latencies[phase].append((time.monotonic() - began) * 1000)
            self.requests[phase] += 1
            await asyncio.sleep(max(0.0, interval - (time.monotonic() - began)))

    def p99(self) -> dict[str, tuple[int, float]]:
        out = {}
        for phase, values in self.latencies.items():
            ordered = sorted(values)
            out[phase] = (len(ordered), ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] if ordered else 0.0)
        return out


async def preload(direct: KvClient, n: int) -> dict[str, bytes]:
    """Records only the old engine has (written before the migration, not through it)."""
    written = {}
    for i in range(n):
        key = f"pre-{i:04d}"
        written[key] = value(key)
        await direct.put("gw", key, {b"v": written[key]})
    return written


async def through_verified(w: World, preloaded: int) -> None:
    """start → backfill → verify with ``dgw migrate``: each step's answer checked."""
    code, out, err = await w.adgw("start", "--from", "thrift", "--to", "cql")
    assert code == 0, err
    assert "shadowing" in out and "next: copy the data" in out
    code, out, err = await w.adgw("backfill")
    assert code == 0, err + out
    m = w.migration()
    assert m["phase"] == "backfilled" and m["progress"]["items"] >= preloaded, m
    code, out, err = await w.adgw("verify")
    assert code == 0, err + out
    assert w.migration()["phase"] == "verified", out


async def _acceptance(w: World) -> None:
    thrift, cql = w.direct("thrift"), w.direct("cql")
    client = w.client()
    try:
        pre = await preload(thrift, 300)
        await answers(client)
        # Live keys, and half of the preloaded ones overwritten while the migration runs.
        load = Load(client, [f"live-{i:03d}" for i in range(60)] + sorted(pre)[:150])
        running = asyncio.create_task(load.run())
        await asyncio.sleep(2)
        load.phase = "shadowing"
        code, out, err = await w.adgw("start", "--from", "thrift", "--to", "cql")
        assert code == 0, err
        await asyncio.sleep(2)
        load.phase = "backfilling"
        code, out, err = await w.adgw("backfill")
        assert code == 0, err + out
        load.phase = "verifying"
        code, out, err = await w.adgw("verify")
        assert code == 0 and w.migration()["phase"] == "verified", err + out
        load.phase = "promoting"
        # The steps are judged for real; PostgreSQL's p99 against SQLite's on this loaded
        # 2-core box may differ by more than the default 1.5x (this test is about losing
        # nothing; the failing-DAL test is about the judgement).
        promote = asyncio.create_task(w.adgw("promote", "--steps", "10,50,100", "--interval", "3s",
                                             "--max-p99-ratio", "5", "--wait"))  # fmt: skip
        while not promote.done():
            m = w.migration()
            p = m.get("promotion")
            if m["phase"] == "promoting" and p:
                load.phase = f"step {p['steps'][p['index']]:g}%"
            await asyncio.sleep(0.2)
        code, out, err = promote.result()
        assert code == 0, err + out
        m = w.migration()
        assert m["phase"] == "promoted" and len(m["promotion"]["verdicts"]) == 3, m
        load.phase = "promoted"
        await asyncio.sleep(2)
        code, out, err = await w.adgw("finish")
        assert code == 0 and "finished" in out, err
        load.phase = "finished"
        await asyncio.sleep(3)
        load.stop.set()
        await running

        table = "\n".join(f"  {phase:<12} {n:>6} requests  p99 {p99:7.1f} ms" for phase, (n, p99) in load.p99().items())
        print(f"\nclient p99 per phase (through Envoy, mTLS, {load.rate:g} req/s, 40 % writes):\n{table}")
        assert load.failures == [], load.failures[:10]
        assert sum(load.requests.values()) > 500
        assert "thrift" not in w.wiring() and w.wiring() == {}
        # Every key as last acknowledged, in the new engine (and nothing older over it).
        lost = []
        for key, (data, token) in sorted(load.acked.items()):
            items = await cql.get("gw", key, with_write_times=True)
            got = [(i.value, i.write_time_us, i.writer_id) for i in items if i.key == b"v"]
            if got != [(data, token.generation_time_us, token.id)]:
                lost.append(key)
        for key, data in pre.items():
            if key not in load.acked and [i.value for i in await cql.get("gw", key)] != [data]:
                lost.append(key)
        assert lost == [], f"{len(lost)} keys not as last written in cql: {lost[:10]}"
        overwritten = [k for k in load.acked if k.startswith("pre-")]
        assert len(overwritten) > 50  # the backfill raced live writes on these
    finally:
        for c in (client, thrift, cql):
            await c.close()


def test_a_whole_migration_under_load_loses_nothing(world: World) -> None:  # noqa: F811
    asyncio.run(_acceptance(world))


async def _failing_target(w: World) -> None:
    thrift = w.direct("thrift")
    client = w.client()
    try:
        await preload(thrift, 20)
        await answers(client)
        await through_verified(w, 20)
        load = Load(client, [f"live-{i:03d}" for i in range(20)], rate=40, limit_s=60)
        running = asyncio.create_task(load.run())
        await asyncio.sleep(1)
        w.fault(True)
        load.phase = "step"
        code, out, err = await w.adgw("promote", "--steps", "10,100", "--interval", "2s", "--wait")
        load.stop.set()
        await running
        assert code == 1, out + err
        m = w.migration()
        assert m["phase"] == "verified", m
        assert m["halted"].startswith("step 1 (10%) failed: cql's error rate"), m["halted"]
        assert "is over the allowed 1.0% (thrift's 0.0% + 1.0%) by" in m["halted"]
        assert "rolled back by itself" in m["halted"]
        assert "halted: step 1 (10%) failed" in out
        assert w.wiring() == {"thrift": {"mode": "shadow", "target": "cql", "traffic": "writes"}}
        # The clients saw at most the step's share of reads fail (some are retried).
        reads = load.requests["step"] * (1 - load.write_share)
        assert load.errors_by_phase["step"] <= 0.10 * reads * 2 + 3, (load.errors_by_phase, load.requests)
        actions = [e["action"] for e in w.server.get("/v1/audit?shard=kvmig&limit=50")["entries"]]
        assert "migration.step.failed" in actions
    finally:
        w.fault(False)
        for c in (client, thrift):
            await c.close()


def test_a_promotion_to_a_failing_dal_halts_at_its_first_step_and_rolls_back(world: World) -> None:  # noqa: F811
    asyncio.run(_failing_target(world))


async def _rollback_after_promotion(w: World) -> None:
    thrift, cql = w.direct("thrift"), w.direct("cql")
    client = w.client()
    try:
        await preload(thrift, 20)
        await answers(client)
        # Careless use through the CLI: one line, exit 1, nothing changed.
        code, out, err = await w.adgw("start", "--from", "thrift", "--to", "nope")
        assert (code, out) == (1, "") and err.count("\n") == 1, err
        assert "--to DAL 'nope' is not a DAL of shard kvmig; its DALs: cql, thrift" in err
        code, out, err = await w.adgw("promote")
        assert code == 1 and "shard kvmig has no migration; start one" in err and err.count("\n") == 1, err
        await through_verified(w, 20)
        code, out, err = await w.adgw("finish")
        assert code == 1 and "cannot finish: the migration of shard kvmig is verified; next: dgw migrate kvmig promote" \
            in err, err
        code, out, err = await w.adgw("promote")
        assert code == 0 and "promoted" in out, err
        # The new DAL serves: a marker written only into cql is what the gateway reads.
        await cql.put("gw", "served-by", {b"who": b"cql"})
        loop = asyncio.get_running_loop()
        end = loop.time() + 20
        while [i.value for i in await client.get("gw", "served-by")] != [b"cql"]:
            assert loop.time() < end, "the promotion did not reach Envoy"
            await asyncio.sleep(0.1)
        written = {}
        for i in range(60):
            key, token = f"promoted-{i:02d}", new_token()
            written[key] = (value(key), token)
            await client.put("gw", key, {b"v": written[key][0]}, token)
        code, out, err = await w.adgw("rollback")
        assert code == 0 and "verified" in out, err
        code, out, err = await w.adgw("status")
        assert code == 0 and "migration of shard kvmig: thrift → cql (dgw.kv.v1.KeyValue), verified" in out, out
        assert "next: dgw migrate kvmig promote" in out and "rolled back from promoted to verified" in out
        code, out, err = await w.adgw("status", "-o", "json")
        assert code == 0 and json.loads(out)["phase"] == "verified"
        assert w.wiring() == {"thrift": {"mode": "shadow", "target": "cql", "traffic": "writes"}}

        async def in_thrift() -> list[str]:
            missing = []
            for key, (data, token) in written.items():
                got = [(i.value, i.write_time_us) for i in await thrift.get("gw", key, with_write_times=True)]
                if got != [(data, token.generation_time_us)]:
                    missing.append(key)
            return missing

        end = loop.time() + 20
        while missing := await in_thrift():  # copies are answered in their own time
            assert loop.time() < end, f"writes made while promoted missing in thrift: {missing[:10]}"
            await asyncio.sleep(0.2)
        assert [i.value for i in await client.get("gw", "promoted-07")] == [written["promoted-07"][0]]
    finally:
        for c in (client, thrift, cql):
            await c.close()


def test_a_rollback_after_promotion_keeps_every_write_in_the_old_engine(world: World) -> None:  # noqa: F811
    asyncio.run(_rollback_after_promotion(world))


async def _backfill_killed(w: World) -> None:
    thrift, cql = w.direct("thrift"), w.direct("cql")
    try:
        pre = await preload(thrift, 2500)  # 1 KiB each: three 1 MiB pages
        code, _, err = await w.adgw("start", "--from", "thrift", "--to", "cql")
        assert code == 0, err
        # Overwritten in thrift after the start: the shadow brings them to cql, newer
        # than what the backfill will copy.
        client = w.client()
        await answers(client)
        newer = {}
        for key in sorted(pre)[:50]:
            newer[key] = value(f"{key}-new")
            await client.put("gw", key, {b"v": newer[key]})
        await client.close()
        code, _, err = await w.adgw("throttle", "--items-per-s", "150")
        assert code == 0, err
        runner = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "dgw.cli", "migrate", "kvmig", "backfill", env=w.env(),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)  # fmt: skip
        try:
            loop = asyncio.get_running_loop()
            end = loop.time() + 30
            while ((w.migration().get("progress") or {}).get("items") or 0) < 100:
                assert loop.time() < end and runner.returncode is None, "the backfill made no checkpoint"
                await asyncio.sleep(0.2)
        finally:
            runner.kill()  # kill -9, midway
            await runner.wait()
        assert w.migration()["phase"] == "backfilling"
        code, out, err = await w.adgw("backfill")
        assert code == 1 and "its lease ends in" in err and "--take-over" in err and err.count("\n") == 1, err
        code, _, err = await w.adgw("throttle", "--items-per-s", "100000")
        code, out, err = await w.adgw("backfill", "--take-over")
        assert code == 0, err + out
        m = w.migration()
        assert m["phase"] == "backfilled" and m["progress"]["done"], m
        for key, data in pre.items():  # no older value over a newer one, nothing missing
            assert [i.value for i in await cql.get("gw", key)] == [newer.get(key, data)], key
        code, out, err = await w.adgw("verify")
        assert code == 0 and w.migration()["phase"] == "verified", out + err
    finally:
        for c in (thrift, cql):
            await c.close()


def test_a_backfill_killed_midway_completes_when_run_again(world: World) -> None:  # noqa: F811
    asyncio.run(_backfill_killed(world))
