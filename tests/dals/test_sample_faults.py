"""The sample DAL's capacity and fault knobs (what resilience tests and benches rely on),
in-process: its HTTP app on a loopback test server, its gRPC handler on a real server."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import grpc
import pytest
from aiohttp.test_utils import TestClient, TestServer

from dals.sample.__main__ import Faults, State, grpc_handler, http_app


def state(**env: str) -> State:
    return State(name="s", faults=Faults.from_env(env), unhealthy_file=None, seed=1)


async def client_of(s: State) -> TestClient:
    client = TestClient(TestServer(http_app(s, "api"), host="127.0.0.1"))
    await client.start_server()
    return client


async def test_fixed_concurrency_queues_the_rest_and_counts_per_method() -> None:
    s = state(SAMPLE_CONCURRENCY="2", SAMPLE_DELAY_MS="30")
    client = await client_of(s)
    try:
        started = time.monotonic()
        answers = await asyncio.gather(*(client.get(f"/r/{i}") for i in range(4)),
                                       *(client.post("/w", data=b"x") for _ in range(2)))  # fmt: skip
        elapsed = time.monotonic() - started
        assert [a.status for a in answers] == [200] * 6
        stats = await (await client.get("/stats")).json()
        assert stats["max_in_service"] == 2, "never more than the concurrency in service"
        assert stats["by_method"] == {"GET": 4, "POST": 2}
        assert stats["requests"] == 6 and stats["waiting"] == 0 and stats["in_service"] == 0
        assert elapsed >= 3 * 0.030, "six calls two at a time take three service times"
    finally:
        await client.close()


async def test_fail_switch_live_and_by_file(tmp_path: Path) -> None:
    flag = tmp_path / "fail"
    s = state(SAMPLE_FAIL_FILE=str(flag))
    client = await client_of(s)
    try:
        assert (await client.get("/a")).status == 200
        flag.touch()
        answer = await client.get("/a")
        assert answer.status == 503 and answer.headers["x-dgw-dal"] == "s"
        flag.unlink()
        assert (await client.put("/faults", json={"fail": True})).status == 200
        assert (await client.get("/a")).status == 503
        assert (await client.put("/faults", json={"fail": False, "slow_percent": 0})).status == 200
        assert (await client.get("/a")).status == 200
        stats = await (await client.get("/stats")).json()
        assert stats["requests"] == 4 and stats["failed"] == 2
    finally:
        await client.close()


@pytest.mark.parametrize("body", [{"fail": "yes"}, {"delay_ms": -1}, {"nope": 1}, [1]])
async def test_bad_knobs_are_refused_and_change_nothing(body: object) -> None:
    s = state(SAMPLE_DELAY_MS="5")
    client = await client_of(s)
    try:
        answer = await client.put("/faults", json=body)
        assert answer.status == 400 and "error" in await answer.json()
        assert s.faults == Faults(delay_ms=5.0)
    finally:
        await client.close()


async def test_slow_share_is_about_the_percent_asked() -> None:
    s = state(SAMPLE_SLOW_PERCENT="10", SAMPLE_SLOW_MS="1")
    slow = 0
    for _ in range(2000):
        started = time.monotonic()
        await s.served("/x", "GET")
        slow += time.monotonic() - started >= 0.001
    assert 120 <= slow <= 280, slow


async def test_grpc_write_and_echo_counted_apart_and_unavailable_when_failing() -> None:
    s = state()
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((grpc_handler(s),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            echo = channel.unary_unary("/dgw.sample.v1.Echo/Echo")
            write = channel.unary_unary("/dgw.sample.v1.Echo/Write")
            assert await echo(b"a", timeout=5) == b"s:a"
            assert await write(b"b", timeout=5) == b"s:b"
            s.faults.update({"fail": True})
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await write(b"c", timeout=5)
            assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
        assert s.by_method == {"/dgw.sample.v1.Echo/Echo": 1, "/dgw.sample.v1.Echo/Write": 2}
        assert s.failed == 1
    finally:
        await server.stop(0)
