"""A shard migrating on real parts: a ``dgw server`` child, two KV DALs (``thrift`` on
SQLite, ``cql`` on PostgreSQL, with the fault switch), a gateway Envoy with mTLS, a
``dgw client-proxy`` for the application, and what a sidecar would do for the
judgement: the gateway Envoy's stats sent to the server every ``STATS_EVERY_S``.

The shard is owned by the API (a migration changes it through the one change path);
both DALs declare the KV API's reads, so a shadow of writes copies writes only.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from dals.kv.client import KvClient
from dgw_api.v1 import gateway_pb2_grpc
from envoy_proxy import BlockingEnvoy
from envoy_proxy.errors import AdminUnavailable
from sidecar.stats_sender import stats_message
from testkit.ports import free_port
from testkit.wait import wait_until
from tests.kv.support import POSTGRES_DSN, drop_schema, kv_dal, require_postgres
from tests.security.datapath import SecureStack, healthy
from tests.support.procs import Child

SHARD, ADDRESS, APP = "kvmig", "kvmig.dgwkv", "kv-app"
READS = ["/dgw.kv.v1.KeyValue/GetItems", "/dgw.kv.v1.KeyValue/ScanItems"]
STATS_EVERY_S = 0.5
M = f"/v1/migrations/{SHARD}"


def shard_text(grpc_port: int, ports: dict[str, dict[str, int]]) -> str:
    return yaml.safe_dump({
        "proxy_config": {"public_listeners": {
            "secure_grpc": {"mode": "grpc", "path": grpc_port, "tls_creds": "metatron", "authz": "gandalf"}}},
        "container_dals": {name: {"container_listeners": p, "read_methods": READS} for name, p in ports.items()},
        # The operator's shadow before the migration (two DALs on one listener need it).
        "wiring": {"thrift": {"mode": "shadow", "target": "cql"}},
        "registrations": [{"address": ADDRESS}],
        "deploy_desires": {"consumers": [{"type": "account-app", "value": APP, "group": "read-write"}]},
    }, sort_keys=False)  # fmt: skip


class StatsPusher:
    """What the sidecar's StatsSender does: the gateway Envoy's stats, to the server."""

    def __init__(self, envoy: BlockingEnvoy, xds_port: int) -> None:
        self.envoy = envoy
        self.channel = grpc.insecure_channel(f"127.0.0.1:{xds_port}")
        self.stub = gateway_pb2_grpc.GatewayStub(self.channel)
        self.stop = threading.Event()
        self.sent = 0
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        epoch = f"{self.envoy.pid}"
        while not self.stop.wait(STATS_EVERY_S):
            try:
                sample = self.envoy.sample()
                self.stub.ReportStats(stats_message(SHARD, "gw-1", epoch, sample), timeout=2)
                self.sent += 1
            except (AdminUnavailable, grpc.RpcError, OSError):
                continue  # the server restarting, Envoy stopping: the next sample carries it

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.channel.close()


@dataclass
class World:
    stack: SecureStack
    ports: dict[str, dict[str, int]]
    proxy_port: int
    faults: Path  # cql answers UNAVAILABLE while this file says so
    workdir: Path
    pusher: StatsPusher | None = None
    children: list[Child] = field(default_factory=list)

    @property
    def server(self) -> Any:
        return self.stack.server

    def api(self, method: str, path: str, body: dict[str, Any] | None = None,
            if_match: int | None = None) -> tuple[int, dict[str, Any]]:  # fmt: skip
        return self.server.call(method, path, body, if_match, timeout=10)  # type: ignore[no-any-return]

    def migration(self) -> dict[str, Any]:
        status, m = self.api("GET", M)
        assert status == 200, m
        return m

    def wiring(self) -> dict[str, Any]:
        data = yaml.safe_load(self.server.get(f"/v1/shards/{SHARD}")["yaml"])
        return dict(data.get("wiring") or {})

    def client(self) -> KvClient:
        return KvClient.connect(f"127.0.0.1:{self.proxy_port}")

    def direct(self, dal: str) -> KvClient:
        return KvClient.connect(f"127.0.0.1:{self.ports[dal]['secure_grpc']}")

    def fault(self, on: bool) -> None:
        self.faults.write_text("unavailable" if on else "")

    def env(self) -> dict[str, str]:
        """How an operator's shell points ``dgw`` at the server."""
        return {**os.environ, "DGW_SERVER": f"http://127.0.0.1:{self.server.admin_port}", "DGW_TOKEN": self.server.token}

    def dgw(self, *args: str, timeout: float = 120) -> tuple[int, str, str]:
        """``dgw migrate SHARD ...`` as an operator runs it (token from $DGW_TOKEN)."""
        run = subprocess.run([sys.executable, "-m", "dgw.cli", "migrate", SHARD, *args], env=self.env(),
                             capture_output=True, text=True, timeout=timeout, check=False)  # fmt: skip
        return run.returncode, run.stdout, run.stderr

    async def adgw(self, *args: str, timeout: float = 120) -> tuple[int, str, str]:
        """``dgw migrate`` without blocking the test's event loop (its load goes on)."""
        return await asyncio.to_thread(self.dgw, *args, timeout=timeout)


async def answers(client: KvClient, timeout: float = 20.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while True:
        try:
            await client.get("gw", "probe")
            return
        except Exception:
            assert loop.time() < end, "the gateway did not answer through the client proxy"
            await asyncio.sleep(0.1)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    asyncio.run(require_postgres())
    schema = f"kv_mig_{secrets.token_hex(4)}"
    stack = SecureStack(tmp_path)
    dals: list[Child] = []
    world: World | None = None
    try:
        faults = tmp_path / "cql.faults"
        ports = {name: {"secure_grpc": free_port(), "api": free_port()} for name in ("thrift", "cql")}
        dals.append(kv_dal("thrift", {"kind": "sqlite", "path": str(tmp_path / "thrift.sqlite3")}, ports["thrift"],
                           tmp_path / "thrift.log"))  # fmt: skip
        dals.append(kv_dal("cql", {"kind": "postgres", "dsn": POSTGRES_DSN, "schema": schema}, ports["cql"],
                           tmp_path / "cql.log", KV_FAULTS_FILE=str(faults)))  # fmt: skip
        grpc_port = free_port()
        status, answer = stack.server.call("PUT", f"/v1/shards/{SHARD}", {"yaml": shard_text(grpc_port, ports)}, 0)
        assert status == 200, answer
        stack.register(SHARD, "gw-1", ADDRESS,
                       [healthy(dal, lst, p) for dal, lp in ports.items() for lst, p in lp.items()])  # fmt: skip
        envoy = stack.gateway(SHARD)
        proxy_port = free_port()
        stack.client_proxy(SHARD, "secure_grpc", ADDRESS, proxy_port, APP)
        world = World(stack, ports, proxy_port, faults, tmp_path)
        world.pusher = StatsPusher(envoy, stack.server.xds_port)
        wait_until(lambda: world is not None and world.pusher is not None and world.pusher.sent >= 2, 20,
                   what="the gateway's stats reaching the server")  # fmt: skip
        yield world
    finally:
        if world is not None and world.pusher is not None:
            world.pusher.close()
        stack.close()
        for dal in dals:
            dal.stop()
        asyncio.run(drop_schema(schema))

