"""A running server under hostile clients and operators: held ports, floods of admin
connections, slowloris, hostile shard files written while it serves."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import aiohttp
import pytest

from tests.ads.ads_wait import eventually
from tests.support.gateway import XdsServerProcess
from tests.support.procs import free_port
from xds_server.server import XdsServer

from .conftest import settings
from .corpus import GOOD, NESTED, alias_bomb

TRACEBACK_SIGNS = ("Traceback", "Event loop is closed", "was never awaited")


def _second_server(tmp_path: Path, xds: int, admin: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dgw.cli", "server", "--insecure", "--config-dir", str(tmp_path / "shards"),
         "--xds", f"127.0.0.1:{xds}", "--admin", f"127.0.0.1:{admin}",
         "--data-dir", str(tmp_path / "data2")],
        capture_output=True, text=True, timeout=60,
    )


@pytest.mark.slow
@pytest.mark.parametrize("held", ["xds", "admin"])
def test_a_held_port_is_a_one_line_error(tmp_path, held):
    first = XdsServerProcess(tmp_path).start()
    try:
        xds, admin = first.xds_port, first.admin_port
        done = _second_server(tmp_path, xds if held == "xds" else free_port(),
                              admin if held == "admin" else free_port())
        assert done.returncode != 0
        lines = done.stderr.strip().splitlines()
        error = [line for line in lines if f"--{held}" in line]
        assert len(error) == 1 and "in use" in error[0], done.stderr
        assert not any(sign in done.stderr for sign in TRACEBACK_SIGNS), done.stderr
        assert first.get("/healthz")["status"] == "ok"
    finally:
        first.stop()


async def test_connections_over_the_limit_are_closed_and_healthz_answers(tmp_path):
    server = XdsServer(settings(tmp_path, admin_connections=50))
    await server.start()
    writers = []
    try:
        for _ in range(200):
            _, writer = await asyncio.open_connection("127.0.0.1", server.admin_port)
            writers.append(writer)
        await eventually(lambda: len(server.admin_runner.server.connections) == 50, 5)  # type: ignore[union-attr]
        for w in writers:  # free room for the check below
            w.close()
        started = time.monotonic()
        async with aiohttp.ClientSession() as http, http.get(
            f"http://127.0.0.1:{server.admin_port}/healthz"
        ) as r:
            assert r.status == 200
        assert time.monotonic() - started < 1.0
    finally:
        await server.stop()


async def test_a_slowloris_connection_is_closed(tmp_path):
    server = XdsServer(settings(tmp_path, admin_idle_timeout_s=0.3))
    await server.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.admin_port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # headers never finished
        await writer.drain()
        for _ in range(20):  # keep trickling, as slowloris does
            try:
                writer.write(b"X-a: b\r\n")
                await writer.drain()
            except ConnectionError:
                break
            if reader.at_eof():
                break
            await asyncio.sleep(0.05)  # the attacker's pace, not synchronisation
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
    finally:
        await server.stop()


async def test_a_failing_watch_makes_healthz_fail(tmp_path):
    server = XdsServer(settings(tmp_path))
    await server.start()
    try:
        server.config_dir.failure = "config dir watch failed: OSError: gone"
        async with aiohttp.ClientSession() as http, http.get(
            f"http://127.0.0.1:{server.admin_port}/healthz"
        ) as r:
            assert r.status == 503
            assert "watch failed" in (await r.json())["problem"]
    finally:
        await server.stop()


def _timed_healthz(port: int) -> float:
    started = time.monotonic()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
        assert r.status == 200
    return time.monotonic() - started


@pytest.mark.slow
def test_healthz_answers_within_a_second_during_hostile_shard_files(tmp_path):
    server = XdsServerProcess(tmp_path).start()
    try:
        server.write_shard("kv", GOOD)
        hostile = {
            "nested": NESTED,
            "bomb": alias_bomb(),
            "deeper": alias_bomb(9),
            "empty": "",
            "comments": "# x\n" * 300_000,  # 1.2 MB, over the size limit
        }
        for name, text in hostile.items():
            server.write_shard(name, text)
        slowest = 0.0
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            slowest = max(slowest, _timed_healthz(server.admin_port))
            shards = {s["shard"]: s for s in server.get("/v1/shards")["shards"]}
            if all(shards.get(n, {}).get("rejected") for n in hostile):
                break
        assert all(shards[n]["rejected"] for n in hostile), shards
        assert shards["kv"]["config_version"] and not shards["kv"]["rejected"]
        assert slowest < 1.0
        raw = urllib.request.urlopen(urllib.request.Request(
            f"http://127.0.0.1:{server.admin_port}/v1/shards/bomb",
            headers={"Authorization": f"Bearer {server.token}"},
        )).read()
        assert len(raw) < 10_000
        log = server.log()
        assert len(log) < 200_000 and "Traceback" not in log
    finally:
        server.stop()


async def test_idle_anonymous_connections_never_lock_out_callers(tmp_path):
    """Issue #17, item 9: more idle unauthenticated sockets than the server holds,
    reconnected as soon as they are closed; every caller is still answered, and an
    authenticated keep-alive connection is never the one closed to make room."""
    from tests.support.server import admin_headers

    # Idle connections time out only after a minute: the kept one must not, on a busy machine.
    server = XdsServer(settings(tmp_path, admin_connections=40, admin_idle_timeout_s=60))
    await server.start()
    flooding = True
    idle: list[asyncio.StreamWriter] = []

    async def flood() -> None:
        while flooding:
            idle[:] = [w for w in idle if not w.is_closing() and not w.transport.is_closing()]
            while flooding and len(idle) < 60:
                try:
                    _, writer = await asyncio.open_connection("127.0.0.1", server.admin_port)
                except OSError:
                    break
                idle.append(writer)
            await asyncio.sleep(0.01)  # the attacker's pace, not synchronisation

    headers = admin_headers(server)
    request = f"GET /v1/shards HTTP/1.1\r\nHost: x\r\nAuthorization: {headers['Authorization']}\r\n\r\n".encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", server.admin_port)

    async def ask_on_the_kept_connection() -> bytes:
        writer.write(request)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
        await reader.readexactly(length)
        return head

    assert (await ask_on_the_kept_connection()).startswith(b"HTTP/1.1 200")
    attacker = asyncio.create_task(flood())
    try:
        await eventually(lambda: len(idle) >= 60, 10)
        async with aiohttp.ClientSession() as http:
            for i in range(20):
                path, auth = ("/healthz", {}) if i % 2 else ("/v1/shards", headers)
                async with http.get(f"http://127.0.0.1:{server.admin_port}{path}", headers=auth) as r:
                    assert r.status == 200, path
        assert (await ask_on_the_kept_connection()).startswith(b"HTTP/1.1 200")
    finally:
        flooding = False
        await attacker
        for w in idle:
            w.close()
        writer.close()
        await server.stop()
