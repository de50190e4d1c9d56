"""What the etcd backend must do beyond the contract: survive compaction, never apply a
write twice when its answer is lost, share tokens and jobs between replicas, and keep
node reports alive exactly as long as their node (``xds_server.ha``)."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path

import pytest

from dgw_api.v1 import gateway_pb2
from etcd_api import rpc_pb2, rpc_pb2_grpc
from testkit.etcd import EtcdCluster
from testkit.ports import free_port
from testkit.wait import eventually
from tests.store.test_contract import put
from tests.support.etcd import etcd, store_url
from xds_server.cache import SnapshotCache
from xds_server.ha.owner import Owner
from xds_server.ha.reports import LeasedReports
from xds_server.ha.session import Session
from xds_server.ha.tokens import EtcdTokenStore
from xds_server.security.tokens import mint
from xds_server.shards import ShardRegistry
from xds_server.store import StoreError
from xds_server.store.etcd import EtcdStore
from xds_server.store.etcd_client import Compacted, EtcdUnavailable

__all__ = ["etcd"]
pytestmark = pytest.mark.etcd


async def _open(cluster: EtcdCluster, url: str | None = None) -> EtcdStore:
    return await EtcdStore.open(url or store_url(cluster))


async def test_a_watch_replays_every_change_after_etcd_compacted_its_history(etcd: EtcdCluster) -> None:
    store = await _open(etcd)
    try:
        written, base = [], None
        for n in range(1, 6):
            written.append(await put(store, "demo", n, base))
            base = written[-1].number
        latest = await store.client.status()
        await rpc_pb2_grpc.KVStub(store.client._channels[0]).Compact(  # type: ignore[no-untyped-call]
            rpc_pb2.CompactionRequest(revision=latest.header.revision, physical=True))
        with pytest.raises(Compacted):
            await anext(store.client.watch(store.prefix, b"", 1))
        changes = store.watch(written[0].revision)
        got = [(await asyncio.wait_for(anext(changes), 10)).meta for _ in range(4)]
        assert got == written[1:]
        v6 = await put(store, "demo", 6, base)
        assert (await asyncio.wait_for(anext(changes), 10)).meta == v6
        await changes.aclose()
    finally:
        await store.close()


async def test_a_write_whose_answer_is_lost_is_stored_once_and_acknowledged(
    etcd: EtcdCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = await _open(etcd)
    real = store.client.txn
    lost = []

    async def answer_lost(compare, success, failure=(), timeout_s=None):  # type: ignore[no-untyped-def]
        response = await real(compare, success, failure, timeout_s)
        if success and any(op.HasField("request_put") for op in success) and not lost:
            lost.append(response)
            raise EtcdUnavailable("the answer was lost on the way back")
        return response

    try:
        v1 = await put(store, "demo", 1, None)
        monkeypatch.setattr(store.client, "txn", answer_lost)
        v2 = await put(store, "demo", 2, v1.number)
        assert lost, "the write's answer was not lost"
        assert v2.number == 2
        assert [v.number for v in await store.history("demo")] == [2, 1]
        monkeypatch.setattr(store.client, "txn", real)
        assert (await put(store, "demo", 3, v2.number)).number == 3
    finally:
        await store.close()


async def test_an_unreachable_etcd_is_a_clear_error(tmp_path: Path) -> None:
    url = f"etcd://127.0.0.1:{free_port()}"
    with pytest.raises(StoreError, match="unreachable"):
        await EtcdStore.open(url, timeout_s=1)
    with pytest.raises(ValueError, match="not an etcd URL"):
        await EtcdStore.open("http://127.0.0.1:2379")


async def test_a_token_made_at_one_replica_works_at_another_and_is_spent_once(etcd: EtcdCluster) -> None:
    url = store_url(etcd)
    a, b = await _open(etcd, url), await _open(etcd, url)
    tokens_a, tokens_b = EtcdTokenStore(a.client, a.prefix), EtcdTokenStore(b.client, b.prefix)
    try:
        await tokens_a.load()
        await tokens_b.load()
        follow = asyncio.create_task(tokens_b.follow())
        _, record = mint("join", "node", dt.datetime.now(dt.UTC), shard="kv", one_time=True)
        tokens_a.add(record)
        assert tokens_b.get(record.token_id) == record  # read through at once
        await eventually(lambda: tokens_b.list() == [record])
        now = dt.datetime.now(dt.UTC)
        assert [tokens_a.spend(record.token_id, now), tokens_b.spend(record.token_id, now)] == [True, False]
        await eventually(lambda: tokens_b.get(record.token_id).used_at is not None)  # type: ignore[union-attr]
        follow.cancel()
    finally:
        for t in (tokens_a, tokens_b):
            t.close()
        await a.close()
        await b.close()


async def test_a_job_has_one_owner_and_another_takes_over_when_it_goes(etcd: EtcdCluster) -> None:
    url = store_url(etcd)
    stores = [await _open(etcd, url) for _ in range(2)]
    sessions = [Session(s.client, s.prefix, f"r{i}", 2, {}) for i, s in enumerate(stores)]
    running: list[str] = []

    def work(name: str):  # type: ignore[no-untyped-def]
        async def job() -> None:
            running.append(name)
            await asyncio.Event().wait()
        return job

    owners = [Owner(s.client, s.prefix, session, "job", work(session.replica_id))
              for s, session in zip(stores, sessions, strict=True)]  # fmt: skip
    tasks = []
    try:
        for session in sessions:
            await session.start()
        tasks = [asyncio.create_task(o.run()) for o in owners]
        await eventually(lambda: sum(o.holding for o in owners) == 1, 10)
        first = next(i for i, o in enumerate(owners) if o.holding)
        assert running == [f"r{first}"]
        await sessions[first].close()  # the owner goes: its lease with it
        await eventually(lambda: owners[1 - first].holding and not owners[first].holding, 10)
        assert running == [f"r{first}", f"r{1 - first}"]
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for s in stores:
            await s.close()


async def test_a_report_lives_while_its_sidecar_is_connected_and_its_lease_after(etcd: EtcdCluster) -> None:
    url = store_url(etcd)
    stores = [await _open(etcd, url) for _ in range(2)]
    registries = [ShardRegistry(SnapshotCache()) for _ in stores]
    sessions = [Session(s.client, s.prefix, f"r{i}", 2, {}) for i, s in enumerate(stores)]
    keepers = [LeasedReports(s.client, s.prefix, session, registry, orphan_ttl_s=2, connectionless_ttl_s=30)
               for s, session, registry in zip(stores, sessions, registries, strict=True)]  # fmt: skip
    for registry, keeper in zip(registries, keepers, strict=True):
        registry.liveness = keeper
    tasks: list[list[asyncio.Task[None]]] = []

    def known(i: int) -> set[str]:
        return {node.report.node_id for _, node in registries[i].all_reports()}

    try:
        for session, keeper in zip(sessions, keepers, strict=True):
            await session.start()
            revision = await keeper.load()
            tasks.append([asyncio.create_task(session.run()), asyncio.create_task(keeper.run(revision))])
        # n1's sidecar is connected to replica 0 and reports there: replica 1 sees it.
        keepers[0].sidecar_connected("kv", "n1")
        registries[0].report(gateway_pb2.NodeReport(shard="kv", node_id="n1"))
        await eventually(lambda: known(1) == {"n1"}, 10)
        # Replica 0 dies; n1 reconnects to replica 1 within the TTL: it stays.
        for task in tasks[0]:
            task.cancel()
        await asyncio.gather(*tasks[0], return_exceptions=True)
        await sessions[0].close()
        keepers[1].sidecar_connected("kv", "n1")
        registries[1].report(gateway_pb2.NodeReport(shard="kv", node_id="n1", host_address="198.18.0.9"))
        await asyncio.sleep(3)  # past replica 0's lease TTL: nothing must change
        assert known(1) == {"n1"}
        # n1's host dies: its connection ends, and its report goes within the TTL.
        keepers[1].sidecar_gone("kv", "n1")
        await eventually(lambda: known(1) == set(), 2 + 3)
    finally:
        every = [t for replica in tasks for t in replica]
        for task in every:
            task.cancel()
        await asyncio.gather(*every, return_exceptions=True)
        for s in stores:
            await s.close()
