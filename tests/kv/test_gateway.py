"""The KV DAL on the platform, real parts: a ``dgw server`` child, two KV DAL processes
(``thrift`` on SQLite, ``cql`` on PostgreSQL), a gateway Envoy with mTLS + RBAC from the
shard's consumers (certificates over SDS from a test CA), ``dgw client-proxy``
children holding each consumer's mTLS.

- every call through the gateway, served by thrift (SQLite) and, after a live rewire
  to ``split 100 %``, by cql (PostgreSQL): the same suite on both engines;
- a write sent twice, and mirrored to cql each time, applies once on each;
- the read-only consumer may GetItems and ScanItems, and is refused PutItems;
- hostile calls get their one clear error through Envoy too.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from dals.kv.client import KvCallError, KvClient
from dals.kv.tokens import new_token
from dals.kv.v1 import kv_pb2
from testkit.ports import free_port
from testkit.wait import wait_until
from tests.kv.support import POSTGRES_DSN, drop_schema, every_call, kv_dal, require_postgres
from tests.security.datapath import SecureStack, healthy
from tests.support.procs import Child

pytestmark = [pytest.mark.envoy, pytest.mark.postgres, pytest.mark.slow]

SHARD, ADDRESS = "kvgw", "kvgw.dgwkv"
WRITER, READER = "kv-app", "kv-reader"
READS = ["/dgw.kv.v1.KeyValue/GetItems", "/dgw.kv.v1.KeyValue/ScanItems"]
# The KV DAL's writes carry idempotency tokens: the gateway may retry them.
IDEMPOTENT = ["/dgw.kv.v1.KeyValue/PutItems", "/dgw.kv.v1.KeyValue/DeleteItems", "/dgw.kv.v1.KeyValue/MutateItems"]


def shard(grpc_port: int, ports: dict[str, dict[str, int]], wiring: dict[str, object]) -> dict[str, object]:
    return {
        "proxy_config": {"public_listeners": {
            "secure_grpc": {"mode": "grpc", "path": grpc_port, "tls_creds": "metatron", "authz": "gandalf"}}},
        "container_dals": {name: {"container_listeners": p, "read_methods": READS, "idempotent_methods": IDEMPOTENT} for name, p in ports.items()},
        "wiring": {"thrift": wiring},
        "registrations": [{"address": ADDRESS}],
        "deploy_desires": {"consumers": [{"type": "account-app", "value": WRITER, "group": "read-write"},
                                         {"type": "account-app", "value": READER, "group": "read-only"}]},
    }  # fmt: skip


@dataclass
class Gateway:
    stack: SecureStack
    grpc_port: int
    ports: dict[str, dict[str, int]]
    proxies: dict[str, int]  # consumer → its client proxy's port

    def rewire(self, wiring: dict[str, object]) -> None:
        self.stack.server.write_shard(SHARD, shard(self.grpc_port, self.ports, wiring))

    def stats(self, dal: str) -> dict[str, int]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.ports[dal]['api']}/stats", timeout=5) as r:
            counters: dict[str, int] = json.loads(r.read())["counters"]
            return counters

    def calls(self, dal: str) -> tuple[Counter[str], Counter[str]]:
        """The gRPC calls ``dal`` has received and those it has answered, by method."""
        received: Counter[str] = Counter()
        answered: Counter[str] = Counter()
        for key, n in self.stats(dal).items():
            api, _, call = key.partition(".")
            if api == "grpc":
                method, _, outcome = call.partition(".")
                (answered if outcome else received)[method] += n
        return received, answered

    def mirrored(self) -> bool:
        """cql has answered a copy of every gRPC call thrift has answered. Envoy sends each
        copy as the call comes and does not wait for it: copies run in any order, side by
        side, and may still be running on cql when the client has all its answers (a
        chunk of 3 MiB into PostgreSQL on a loaded machine takes longer than into SQLite).
        What the DAL promises is about copies it has answered: those are applied, once."""
        (thrift_in, thrift_out), (cql_in, cql_out) = self.calls("thrift"), self.calls("cql")
        return thrift_in == thrift_out == cql_in == cql_out

    def failed_copies(self) -> list[str]:
        """cql's calls that ended without being applied: engine down, cancelled, a bug."""
        return [f"{k}={n}" for k, n in self.stats("cql").items()
                if k.startswith("grpc.") and k.endswith((".UNAVAILABLE", ".CANCELLED", ".UNKNOWN"))]  # fmt: skip

    def client(self, who: str) -> KvClient:
        return KvClient.connect(f"127.0.0.1:{self.proxies[who]}")

    def direct(self, dal: str) -> KvClient:
        return KvClient.connect(f"127.0.0.1:{self.ports[dal]['secure_grpc']}")


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[Gateway]:
    asyncio.run(require_postgres())
    schema = f"kv_gw_{secrets.token_hex(4)}"
    stack = SecureStack(tmp_path)
    dals: list[Child] = []
    try:
        ports = {name: {"secure_grpc": free_port(), "api": free_port()} for name in ("thrift", "cql")}
        dals.append(kv_dal("thrift", {"kind": "sqlite", "path": str(tmp_path / "thrift.sqlite3")}, ports["thrift"],
                           tmp_path / "thrift.log"))  # fmt: skip
        dals.append(kv_dal("cql", {"kind": "postgres", "dsn": POSTGRES_DSN, "schema": schema}, ports["cql"],
                           tmp_path / "cql.log"))  # fmt: skip
        grpc_port = free_port()
        stack.server.write_shard(SHARD, shard(grpc_port, ports, {"mode": "shadow", "target": "cql"}))
        stack.register(SHARD, "gw-1", ADDRESS,
                       [healthy(dal, lst, p) for dal, lp in ports.items() for lst, p in lp.items()])  # fmt: skip
        stack.gateway(SHARD)
        proxies = {who: free_port() for who in (WRITER, READER)}
        for who, port in proxies.items():
            stack.client_proxy(SHARD, "secure_grpc", ADDRESS, port, who)
        yield Gateway(stack, grpc_port, ports, proxies)
    finally:
        stack.close()
        for dal in dals:
            dal.stop()
        asyncio.run(drop_schema(schema))


async def _answers(client: KvClient) -> bool:
    try:
        await client.get("gw", "probe")
    except KvCallError:
        return False
    return True


async def _wait_answers(client: KvClient, timeout: float = 20.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not await _answers(client):
        assert loop.time() < end, "the gateway did not answer through the client proxy"
        await asyncio.sleep(0.1)


def test_every_call_on_both_engines_shadowed_once_and_the_read_only_consumer(gateway: Gateway) -> None:
    asyncio.run(_scenario(gateway))


async def _scenario(gw: Gateway) -> None:
    writer, reader = gw.client(WRITER), gw.client(READER)
    thrift, cql = gw.direct("thrift"), gw.direct("cql")
    try:
        await _wait_answers(writer)
        # Through the gateway to thrift (SQLite); every request mirrored to cql.
        await every_call(writer, "gw", "sqlite")

        # A retry, and the mirror of each attempt, apply once on each engine. Mirrors
        # run on their own time: first every one of the suite's has to end.
        wait_until(gw.mirrored, 20, what="cql to have answered every mirrored call")
        assert gw.failed_copies() == []
        token = new_token()
        before = {dal: gw.stats(dal).get("items_applied", 0) for dal in ("thrift", "cql")}
        assert await writer.put("gw", "retried", {b"k": b"v"}, token) == 1
        assert await writer.put("gw", "retried", {b"k": b"v"}, token) == 0
        for dal in ("thrift", "cql"):
            wait_until(lambda d=dal: gw.stats(d).get("items_applied", 0) - before[d] == 1, 10,
                       what=f"{dal} to have applied the write once")  # fmt: skip
        wait_until(gw.mirrored, 20, what="cql to have answered both attempts")
        for direct in (thrift, cql):
            [item] = await direct.get("gw", "retried", with_write_times=True)
            assert (item.value, item.write_time_us, item.writer_id) == (b"v", token.generation_time_us, token.id)
        assert gw.stats("thrift").get("items_applied", 0) - before["thrift"] == 1
        assert gw.stats("cql").get("items_applied", 0) - before["cql"] == 1
        # The shadow copy of the whole suite's end state is in cql, item for item.
        got_cql, got_thrift = await cql.get("gw", "sqlite-2"), await thrift.get("gw", "sqlite-2")
        assert got_cql == got_thrift, ([(i.key, len(i.value)) for i in got_cql], gw.stats("cql"))

        # The read-only consumer reads, and may not write.
        await _wait_answers(reader)
        assert [i.value for i in await reader.get("gw", "retried")] == [b"v"]
        assert [b.items async for b in reader.scan("gw")]
        try:
            await reader.put("gw", "retried", {b"k": b"evil"})
            raise AssertionError("a read-only consumer wrote")
        except KvCallError as e:
            assert e.code is grpc.StatusCode.PERMISSION_DENIED

        # Hostile calls through Envoy: one clear error, nothing stored.
        raw = writer.channel.unary_unary("/dgw.kv.v1.KeyValue/PutItems")
        good = kv_pb2.PutItemsRequest(namespace="gw", id="h", items=[kv_pb2.Item(key=b"k", value=b"v")],
                                      idempotency_token=new_token())  # fmt: skip
        many = kv_pb2.GetItemsRequest(namespace="gw", id="h")
        many.predicate.keys.keys.extend(str(i).encode() for i in range(10_000))
        cases = [
            (raw, good.SerializeToString().replace(b"\x0a\x02gw", b"\x0a\x02\xff\xfe"), "not valid UTF-8"),
            (writer.channel.unary_unary("/dgw.kv.v1.KeyValue/GetItems"), many.SerializeToString(),
             "limits.max_items_per_call"),
        ]  # fmt: skip
        for call, body, words in cases:
            try:
                await call(body, timeout=10)
                raise AssertionError("a hostile call was answered")
            except grpc.aio.AioRpcError as e:
                assert e.code() is grpc.StatusCode.INVALID_ARGUMENT and words in (e.details() or "")
        assert await thrift.get("gw", "h") == []

        # Rewired live: every request now goes to cql (PostgreSQL); the same suite again.
        gw.rewire({"mode": "split", "target": "cql", "percent": 100})
        marker = new_token()
        await cql.put("gw", "served-by", {b"who": b"cql"}, marker)

        async def served_by_cql() -> bool:
            return [i.value for i in await writer.get("gw", "served-by")] == [b"cql"]

        end = asyncio.get_running_loop().time() + 20
        while not await served_by_cql():
            assert asyncio.get_running_loop().time() < end, "the rewire did not reach Envoy"
            await asyncio.sleep(0.1)
        await every_call(writer, "gw", "postgres")
        assert await thrift.get("gw", "postgres-2") == []  # nothing went to thrift
    finally:
        for client in (writer, reader, thrift, cql):
            await client.close()
