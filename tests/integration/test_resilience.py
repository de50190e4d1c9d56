"""The resilience policies against the real Envoy (issue 19's acceptance): a failing
endpoint ejected and returned, overload shed at once with the documented status, a
retry storm held to the retry budget, writes never doubled while reads hedge; and what
each did, counted in ``/v1/stats`` (the Envoy's stats sent the way a sidecar sends them).

The DALs are ``dals/sample`` processes with a known capacity and fault switches flipped
live (``PUT /faults``); every call is counted at the DAL. Loads are small and bounded;
every wait polls with a deadline.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest

from testkit.ports import free_port
from testkit.wait import wait_until
from tests.cli.run import dgw

from .conftest import Stack, answered_by, healthy, http_get

pytestmark = [pytest.mark.envoy, pytest.mark.slow]

ECHO, WRITE = "/dgw.sample.v1.Echo/Echo", "/dgw.sample.v1.Echo/Write"


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    s = Stack(tmp_path, delta=False)
    yield s
    s.close()


def faults(port: int, **knobs: Any) -> None:
    """Flip a DAL's fault knobs live (straight to the DAL, not through Envoy)."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    c.request("PUT", "/faults", json.dumps(knobs), {"content-type": "application/json"})
    assert c.getresponse().status == 200
    c.close()


def dal_stats(port: int) -> dict[str, Any]:
    return http_get(port, "/stats")[1]


def shard(api: int, dal: dict[str, Any], rpc: int | None = None, **top: Any) -> dict[str, Any]:
    listeners: dict[str, Any] = {"api": {"mode": "http", "path": api}}
    if rpc is not None:
        listeners["secure_grpc"] = {"mode": "grpc", "path": rpc}
    return {"proxy_config": {"public_listeners": listeners}, "container_dals": {"kv": dal}, **top}


def start(stack: Stack, name: str, config: dict[str, Any], dals: dict[str, dict[str, int]],
          **env: str) -> None:  # fmt: skip
    """Write the shard, start one sample DAL process per endpoint of DAL ``kv`` (named
    ``kv-<key>`` so an answer says which served it), report them, start the Envoy."""
    stack.server.write_shard(name, config)
    for key, ports in dals.items():
        stack.dal(f"kv-{key}", ports, **env)
    stack.server.report(name, "node-1", [
        healthy("kv", listener, port) for ports in dals.values() for listener, port in ports.items()
    ])  # fmt: skip
    stack.envoy(name)


def test_an_endpoint_answering_5xx_is_ejected_and_returns_after_the_ejection_time(
    stack: Stack,
) -> None:
    api = free_port()
    dals = {"a": {"api": free_port()}, "b": {"api": free_port()}}
    start(stack, "ej", shard(api, {"container_listeners": {"api": 8081}, "resilience": {
        "outlier_detection": {"consecutive_5xx": 3, "consecutive_gateway_failure": 3, "interval": "100ms",
                              "base_ejection_time": "1s", "max_ejection_percent": 50},
    }}), dals)  # fmt: skip
    envoy = stack.envoys[0]
    seen: set[str | None] = set()
    wait_until(
        lambda: seen.add(answered_by(api)) or {"kv-a", "kv-b"} <= seen,
        15,
        what="both endpoints serving",
    )

    faults(dals["b"]["api"], fail=True)
    ejected = "cluster.dal.kv.api.outlier_detection.ejections_active"
    wait_until(
        lambda: answered_by(api) is not None and envoy.stat(ejected) == 1, 15, what="b ejected"
    )
    b_calls = dal_stats(dals["b"]["api"])["requests"]
    answers = [answered_by(api) for _ in range(30)]
    assert answers == ["kv-a"] * 30, "while b is ejected, its healthy peer takes every request"
    assert dal_stats(dals["b"]["api"])["requests"] == b_calls, "an ejected endpoint gets no traffic"

    faults(dals["b"]["api"], fail=False)
    healed = time.monotonic()
    wait_until(
        lambda: answered_by(api) == "kv-b", 15, what="b back in rotation after its ejection time"
    )
    assert time.monotonic() - healed >= 0.3, "ejected for its ejection time, not returned at once"
    assert envoy.stat(ejected) == 0
    assert envoy.stat("cluster.dal.kv.api.outlier_detection.ejections_enforced_total") >= 1


async def _burst(
    url: str, n: int, headers: dict[str, str] | None = None
) -> list[tuple[int, float, bool]]:
    """``n`` requests at once, each on its own connection: (status, seconds, retry-after?)."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def one() -> tuple[int, float, bool]:
            began = time.monotonic()
            async with session.get(
                url, headers=headers or {}, timeout=aiohttp.ClientTimeout(total=15)
            ) as r:
                await r.read()
                return r.status, time.monotonic() - began, "retry-after" in r.headers

        return await asyncio.gather(*(one() for _ in range(n)))


async def _grpc_burst(port: int, n: int) -> list[grpc.StatusCode]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        echo = channel.unary_unary(ECHO)

        async def one() -> grpc.StatusCode:
            try:
                await echo(b"x", timeout=15)
                return grpc.StatusCode.OK
            except grpc.aio.AioRpcError as e:
                return e.code()

        return list(await asyncio.gather(*(one() for _ in range(n))))


def test_overload_is_shed_at_once_with_the_documented_status_and_everything_recovers(
    stack: Stack,
) -> None:
    api, rpc = free_port(), free_port()
    ports = {"api": free_port(), "secure_grpc": free_port()}
    # The DAL serves 2 requests at once, 50 ms each: 40/s. The breakers admit 3 in flight and 1 waiting.
    start(stack, "shed", shard(api, {"container_listeners": {"api": 8081, "secure_grpc": 8981}, "resilience": {
        "circuit_breakers": {"max_connections": 3, "max_requests": 3, "max_pending_requests": 1},
    }}, rpc), {"a": ports}, SAMPLE_CONCURRENCY="2", SAMPLE_DELAY_MS="50")  # fmt: skip
    envoy = stack.envoys[0]
    wait_until(lambda: answered_by(api) == "kv-a", 15, what="the DAL through Envoy")
    stack.server.send_stats(envoy)  # the window's first sample

    answers = asyncio.run(_burst(f"http://127.0.0.1:{api}/v1/item", 40))
    admitted = [s for s, _, _ in answers if s == 200]
    shed = [(t, ra) for s, t, ra in answers if s == 503]
    assert len(admitted) + len(shed) == 40, f"only 200 or 503: {sorted({s for s, _, _ in answers})}"
    assert len(shed) >= 20, "beyond 4 in the gateway, requests are refused"
    assert all(ra for _, ra in shed), "every shed answer says when to come back (retry-after)"
    assert max(t for t, _ in shed) < 1.0, "shed at once, not after queueing"
    admitted_s = [t for s, t, _ in answers if s == 200]
    # At most 4 in the gateway and 2 served at once: an admitted request waits ≤ ~2 service times.
    assert max(admitted_s) < 1.0, admitted_s
    assert dal_stats(ports["api"])["max_in_service"] <= 2

    codes = asyncio.run(_grpc_burst(rpc, 40))
    refused = [c for c in codes if c != grpc.StatusCode.OK]
    assert refused and set(refused) <= {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }, codes

    assert envoy.alive() and answered_by(api) == "kv-a", "Envoy and the DAL stay up"
    assert [answered_by(api) for _ in range(10)] == ["kv-a"] * 10, "recovered when the load drops"
    assert envoy.stat("cluster.dal.kv.api.upstream_rq_pending_overflow") >= len(shed)

    # What was shed is counted per shard, cluster and listener (as a sidecar reports it).
    stack.server.send_stats(envoy)
    stats = stack.server.get("/v1/stats/shed?window=60s")
    assert stats["resilience"]["shed"]["circuit_breaker"] >= len(shed)
    assert stats["clusters"]["dal.kv.api"]["resilience"]["shed"]["requests"] >= len(shed)
    assert stats["routes"]["api/reads"]["errors"] >= len(shed), "the reads' route answered them 503"


def test_a_retry_storm_does_not_raise_the_dal_load_beyond_the_retry_budget(stack: Stack) -> None:
    api = free_port()
    port = free_port()
    budget = 20
    start(stack, "storm", shard(api, {"container_listeners": {"api": 8081}, "resilience": {
        "retries": {"attempts": 3, "budget_percent": budget, "min_retry_concurrency": 1},
        # keep the endpoint in rotation: the storm is about retries, not ejection
        "outlier_detection": {"consecutive_5xx": 1000000, "consecutive_gateway_failure": 1000000},
    }}), {"a": {"api": port}}, SAMPLE_DELAY_MS="20")  # fmt: skip
    envoy = stack.envoys[0]
    wait_until(lambda: answered_by(api) == "kv-a", 15, what="the DAL through Envoy")
    envoy_retries = "cluster.dal.kv.api.upstream_rq_retry"
    retries_before, requests_before = envoy.stat(envoy_retries), dal_stats(port)["requests"]
    stack.server.send_stats(envoy)  # the window's first sample
    faults(port, fail=True)  # every call fails after its 20 ms

    async def storm(clients: int, tries: int) -> int:
        """Every client retries every failure at once, ``tries`` times: what Envoy received."""
        sent = 0
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

            async def client() -> None:
                nonlocal sent
                for _ in range(tries):
                    sent += 1
                    async with session.get(f"http://127.0.0.1:{api}/v1/item") as r:
                        await r.read()
                        if r.status == 200:
                            return

            await asyncio.gather(*(client() for _ in range(clients)))
        return sent

    received = asyncio.run(storm(clients=30, tries=10))
    calls = dal_stats(port)["requests"] - requests_before
    retries = envoy.stat(envoy_retries) - retries_before
    # Without a budget, 3 retries each would make 4 calls per request. With it, retries in
    # flight stay within 20 % of the active requests: of 30 active, at most 6 retrying and
    # 24 on their first try, so at most 6/24 = 25 % more calls than requests (+ the ramp).
    assert calls == received + retries, (received, calls, retries)
    assert received <= calls <= received * (1 + budget / (100 - budget)) * 1.1 + 10, (
        received,
        calls,
        retries,
    )
    assert envoy.stat("cluster.dal.kv.api.upstream_rq_retry_overflow") > 0, (
        "the budget refused retries"
    )
    faults(port, fail=False)
    assert answered_by(api) == "kv-a"

    stack.server.send_stats(envoy)
    shown = stack.server.get("/v1/stats/storm?window=60s")["resilience"]["retried"]
    assert shown["refused_by_budget"] > 0 and shown["retries"] == retries
    env = {"DGW_SERVER": f"127.0.0.1:{stack.server.admin_port}", "DGW_TOKEN": stack.server.token}
    table = dgw("stats", "storm", "--window", "60s", env=env, timeout=30)
    assert table.returncode == 0, table.stderr
    line = next(x for x in table.stdout.splitlines() if x.startswith("retried refused_by_budget"))
    assert int(line.split()[-1]) == shown["refused_by_budget"]
    scrape = urllib.request.Request(f"http://127.0.0.1:{stack.server.admin_port}/metrics",
                                    headers={"Authorization": f"Bearer {stack.server.token}"})  # fmt: skip
    with urllib.request.urlopen(scrape, timeout=5) as answer:
        metrics = answer.read().decode()
    assert f'dgw_resilience_events_total{{group="retried",reason="refused_by_budget",shard="storm"}} ' \
           f'{float(shown["refused_by_budget"])}' in metrics  # fmt: skip


def test_writes_are_never_hedged_or_doubled_while_reads_hedge(stack: Stack) -> None:
    api, rpc = free_port(), free_port()
    dals = {"fast": {"api": free_port(), "secure_grpc": free_port()},
            "slow": {"api": free_port(), "secure_grpc": free_port()}}  # fmt: skip
    start(stack, "hedge", shard(api, {
        "container_listeners": {"api": 8081, "secure_grpc": 8981},
        "read_methods": [ECHO],
        "resilience": {"timeout": "2s", "retries": {"attempts": 2, "per_try_timeout": "100ms"}, "hedging": True},
    }, rpc), dals)  # fmt: skip
    envoy = stack.envoys[0]
    seen: set[str | None] = set()
    wait_until(
        lambda: seen.add(answered_by(api)) or {"kv-fast", "kv-slow"} <= seen,
        15,
        what="both endpoints",
    )
    faults(dals["slow"]["api"], delay_ms=400)  # one process serves both listeners

    def counted(method: str) -> int:
        return sum(dal_stats(p["api"])["by_method"].get(method, 0) for p in dals.values())

    reads, writes = counted("GET"), counted("POST")
    read_s = []
    for i in range(20):
        began = time.monotonic()
        status, _ = http_get(api, f"/v1/item/{i}")
        read_s.append(time.monotonic() - began)
        assert status == 200
    write_status = []
    for i in range(20):
        c = http.client.HTTPConnection("127.0.0.1", api, timeout=5)
        c.request("POST", f"/v1/item/{i}", b"w")
        write_status.append(c.getresponse().status)
        c.close()
    assert write_status == [200] * 20, "a slow write is waited for, not timed out per try"
    hedged = counted("GET") - reads
    assert hedged > 20, "reads sent to the slow endpoint were hedged to the fast one"
    assert max(read_s) < 0.4, "a hedged read answers from the fast endpoint, not after the slow one"
    assert counted("POST") - writes == 20, "writes counted at the DAL: none doubled"

    with grpc.insecure_channel(f"127.0.0.1:{rpc}") as channel:
        before = {
            m: sum(dal_stats(p["api"])["by_method"].get(m, 0) for p in dals.values())
            for m in (ECHO, WRITE)
        }
        for i in range(10):
            assert channel.unary_unary(ECHO)(b"r%d" % i, timeout=5).endswith(b"r%d" % i)
        for i in range(10):
            assert channel.unary_unary(WRITE)(b"w%d" % i, timeout=5).endswith(b"w%d" % i)
        after = {
            m: sum(dal_stats(p["api"])["by_method"].get(m, 0) for p in dals.values())
            for m in (ECHO, WRITE)
        }
    assert after[WRITE] - before[WRITE] == 10, "gRPC writes: none doubled"
    assert after[ECHO] - before[ECHO] > 10, "gRPC reads (declared in read_methods) hedge"
    # A hedge is a retry in Envoy's counts (the slow try is not timed out: it runs on).
    assert envoy.stat("cluster.dal.kv.api.upstream_rq_retry") >= hedged - 20
    assert envoy.stat("cluster.dal.kv.secure_grpc.upstream_rq_retry") >= 1
