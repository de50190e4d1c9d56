"""Node reports in etcd, alive as long as their node is: every replica's EDS and
discovery see every node, whichever replica its sidecar talks to.

``reports/<shard>/<node>`` holds a node's last report (the ``NodeReport`` bytes, and
which replica wrote it). What keeps the key alive is the lease it is put under:

- while the node's sidecar is connected to this replica (its ``WatchConfig`` stream
  is open here), the replica's own session lease, kept alive by the replica;
- when that stream ends, a short lease that nobody refreshes (``orphan_ttl_s``): if
  the sidecar comes back, here or at another replica, it reports again and the key is
  put under that replica's session lease; if its host is dead, the key expires and
  the node leaves every replica's EDS and discovery within ``orphan_ttl_s``;
- a report sent over HTTP (``POST /v1/reports``, no connection) lives ``report_ttl_s``
  from its last send, as on one server.

A replica that dies takes its session lease with it, but its nodes' sidecars reconnect
to another replica and report there well within the TTL, so their keys survive. A
replica cut off from etcd keeps serving its own nodes from memory and puts their
reports back under a new lease when etcd answers again.

Every replica lists ``reports/`` before it serves (a restarted replica gives a
reconnecting Envoy the endpoints it already has, not an empty set), then follows it.
Writes are coalesced per node and an unchanged report is not written again: a
sidecar's periodic re-report costs etcd nothing.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from collections.abc import Iterable
from urllib.parse import quote, unquote

from dgw_api.v1 import gateway_pb2
from etcd_api import kv_pb2, rpc_pb2
from xds_server.ha.session import Session
from xds_server.shards import ShardRegistry
from xds_server.store.etcd_client import Compacted, EtcdClient, EtcdError, prefix_end, put

log = logging.getLogger("xds_server.ha.reports")

NodeKey = tuple[str, str]  # (shard, node id)
_BATCH = 100  # puts per transaction
_RETRY_MAX_S = 2.0


class LeasedReports:
    """``NodeLiveness`` for a replica: see the module docstring."""

    def __init__(self, client: EtcdClient, prefix: bytes, session: Session, registry: ShardRegistry,
                 *, orphan_ttl_s: float, connectionless_ttl_s: float) -> None:  # fmt: skip
        self.client = client
        self.base = prefix + b"reports/"
        self.session = session
        self.registry = registry
        self.orphan_ttl_s = max(2, round(orphan_ttl_s))
        self.connectionless_ttl_s = max(2, round(connectionless_ttl_s))
        self._connected: dict[NodeKey, int] = {}  # open sidecar streams here, per node
        self._latest: dict[NodeKey, gateway_pb2.NodeReport] = {}  # reports received here
        self._left: set[NodeKey] = set()  # sidecars gone from here: to put under an orphan lease
        self._written: dict[NodeKey, tuple[bytes, int]] = {}  # (report bytes, lease) last put
        self._remote: set[NodeKey] = set()  # nodes known from etcd only
        self._dirty: set[NodeKey] = set()
        self._wake = asyncio.Event()
        self._buckets: dict[int, tuple[int, float]] = {}  # ttl → (lease, granted at)
        session.on_new_lease(self._new_lease)

    def _key(self, node: NodeKey) -> bytes:
        return self.base + f"{quote(node[0], safe='')}/{quote(node[1], safe='')}".encode()

    def _node(self, key: bytes) -> NodeKey:
        shard, _, node = key[len(self.base):].decode().partition("/")
        return unquote(shard), unquote(node)

    # --- NodeLiveness: what happens here ----------------------------------------------

    def reported(self, report: gateway_pb2.NodeReport) -> None:
        node = (report.shard, report.node_id)
        self._latest[node] = report
        self._remote.discard(node)
        self._mark(node)

    def sidecar_connected(self, shard: str, node_id: str) -> None:
        node = (shard, node_id)
        self._connected[node] = self._connected.get(node, 0) + 1
        self._left.discard(node)
        if node in self._latest:
            self._mark(node)  # back under our session lease

    def sidecar_gone(self, shard: str, node_id: str) -> None:
        node = (shard, node_id)
        count = self._connected.get(node, 0) - 1
        if count > 0:
            self._connected[node] = count
            return
        self._connected.pop(node, None)
        if node in self._latest:
            self._left.add(node)
            self._mark(node)

    def _mark(self, node: NodeKey) -> None:
        self._dirty.add(node)
        self._wake.set()

    async def _new_lease(self, lease: int) -> None:
        self._written = {n: w for n, w in self._written.items() if n not in self._connected}
        for node in self._connected:
            if node in self._latest:
                self._mark(node)

    # --- start: what etcd holds --------------------------------------------------------

    async def load(self) -> int:
        """Every report in etcd into the registry; the etcd revision read at."""
        listed: set[NodeKey] = set()
        start, end, revision = self.base, prefix_end(self.base), 0
        while True:
            response = await self.client.range(rpc_pb2.RangeRequest(key=start, range_end=end, limit=1000,
                                                                    revision=revision))  # fmt: skip
            revision = revision or int(response.header.revision)
            for kv in response.kvs:
                node = self._node(kv.key)
                listed.add(node)
                self._accept(node, kv.value)
            if not response.more:
                break
            start = response.kvs[-1].key + b"\0"
        for node in self._remote - listed:
            self._forget(node)
        log.info("event=reports_loaded nodes=%d revision=%d", len(listed), revision)
        return revision

    def _accept(self, node: NodeKey, value: bytes) -> None:
        if node in self._connected or node in self._latest:
            return  # ours: what this replica was told is newer than what it wrote
        try:
            doc = json.loads(value)
            if doc.get("replica") == self.session.replica_id:
                return
            report = gateway_pb2.NodeReport.FromString(base64.b64decode(doc["report"]))
            self.registry.accept(report, time.time())
        except (ValueError, KeyError, TypeError) as e:
            log.warning("event=report_unusable shard=%s node=%s error=%s", node[0], node[1], str(e)[:200])
            return
        self._remote.add(node)

    def _forget(self, node: NodeKey) -> None:
        self._remote.discard(node)
        if self.registry.forget(*node):
            log.info("event=report_expired shard=%s node=%s via=lease", *node)

    # --- run: write ours, follow everyone's --------------------------------------------

    async def run(self, after_revision: int) -> None:
        await asyncio.gather(self._write_loop(), self._follow(after_revision))

    async def _follow(self, revision: int) -> None:
        pause = 0.2
        while True:
            try:
                async for batch in self.client.watch(self.base, prefix_end(self.base), revision + 1):
                    pause = 0.2
                    for event in batch.events:
                        self._event(event)
                    revision = batch.revision
            except Compacted:
                revision = await self._reload()
            except EtcdError as e:
                log.warning("event=reports_watch_broken error=%s retry_in=%.1f", e, pause)
                await asyncio.sleep(pause)
                pause = min(pause * 2, _RETRY_MAX_S)
                try:
                    revision = await self._reload()
                except EtcdError:
                    continue

    async def _reload(self) -> int:
        return await self.load()

    def _event(self, event: kv_pb2.Event) -> None:
        node = self._node(event.kv.key)
        if event.type == kv_pb2.Event.PUT:
            self._accept(node, event.kv.value)
        elif node in self._connected and node in self._latest:
            self._written.pop(node, None)
            self._mark(node)  # our lease lapsed (we were cut off): put it back
        elif node not in self._latest:
            self._forget(node)
        else:
            # A report we received but whose sidecar left: its orphan lease expired.
            self._latest.pop(node, None)
            self._written.pop(node, None)
            self.registry.forget(*node)
            log.info("event=report_expired shard=%s node=%s via=lease", *node)

    async def _write_loop(self) -> None:
        pause = 0.2
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self._flush(sorted(self._dirty))
                pause = 0.2
            except EtcdError as e:
                log.warning("event=reports_not_written nodes=%d error=%s retry_in=%.1f", len(self._dirty), e, pause)
                await asyncio.sleep(pause)
                pause = min(pause * 2, _RETRY_MAX_S)
                self._wake.set()

    async def _flush(self, nodes: Iterable[NodeKey]) -> None:
        ops: list[tuple[NodeKey, rpc_pb2.RequestOp, tuple[bytes, int]]] = []
        for node in nodes:
            report = self._latest.get(node)
            if report is None:
                self._dirty.discard(node)
                continue
            if node in self._connected:
                if not self.session.lease:
                    continue  # no lease now: written when the session has one again
                lease = self.session.lease
            elif node in self._left:
                lease = await self._bucket(self.orphan_ttl_s)
            else:
                lease = await self._bucket(self.connectionless_ttl_s)
            data = report.SerializeToString(deterministic=True)
            if self._written.get(node) == (data, lease) and node not in self._left:
                self._dirty.discard(node)
                continue
            value = json.dumps({"replica": self.session.replica_id, "at": time.time(),
                                "report": base64.b64encode(data).decode()}).encode()  # fmt: skip
            ops.append((node, put(self._key(node), value, lease), (data, lease)))
        for start in range(0, len(ops), _BATCH):
            chunk = ops[start:start + _BATCH]
            await self.client.txn([], [op for _, op, _ in chunk])
            for node, _, written in chunk:
                self._dirty.discard(node)
                self._written[node] = written
                if node in self._left:
                    # Handed to its orphan lease: from now on it is etcd's to keep or drop.
                    self._left.discard(node)
                    self._latest.pop(node, None)
                    self._written.pop(node, None)
                    self._remote.add(node)

    async def _bucket(self, ttl_s: int) -> int:
        """A lease of ``ttl_s`` that nobody refreshes, shared by what is put under it
        within one second (so a storm of departures is a few grants, not thousands)."""
        held = self._buckets.get(ttl_s)
        now = time.monotonic()
        if held is not None and now - held[1] < 1.0:
            return held[0]
        lease = await self.client.lease_grant(ttl_s)
        self._buckets[ttl_s] = (lease, now)
        return lease
