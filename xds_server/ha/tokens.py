"""Tokens in etcd (``tokens/<id>``), so a token made through one replica works at every
replica at once, and a one-time join token is spent once across all of them.

``TokenStore`` is synchronous (checking a token is a dictionary lookup on every admin
request and every join). The records are held in memory, kept current by an etcd
watch; a change is written to etcd first, with compare-and-set on the record's etcd
revision, over a blocking call bounded by ``timeout_s``: it blocks the event loop
for about a millisecond, as SQLite's fsync did for the embedded token store, and only
on the rare writes (create, revoke, spend a one-time token). Spending compares the
record's revision, so of two replicas spending one token at once exactly one
succeeds. A token another replica made a moment ago may not have reached this
replica's watch yet: a lookup that misses asks etcd once before saying "unknown".
While etcd is unreachable, writes fail at once with ``TokenStoreError`` (and no
lookup waits on it): the admin API answers 503.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
import logging
import time
from typing import Any

import grpc

from etcd_api import kv_pb2, rpc_pb2, rpc_pb2_grpc
from xds_server.security.token_store import TokenStoreError
from xds_server.security.tokens import ROLES, TokenRecord
from xds_server.store.etcd_client import Compacted, EtcdClient, EtcdError, mod_is, prefix_end

log = logging.getLogger("xds_server.ha.tokens")

TIDY_EVERY_S = 600.0
TIDY_KEEP = dt.timedelta(days=1)
# A miss asks etcd again only after this long (an unknown token hammered at us costs
# one read per this interval, not one per request).
_MISS_RETRY_S = 1.0


class EtcdTokenStore:
    def __init__(self, client: EtcdClient, prefix: bytes, *, timeout_s: float = 1.0) -> None:
        self.client = client
        self.base = prefix + b"tokens/"
        self.timeout_s = timeout_s
        self._records: dict[str, tuple[TokenRecord, int]] = {}  # id → (record, etcd mod revision)
        self._misses: dict[str, float] = {}
        self._revision = 0
        self._reachable = True
        # Blocking calls go to the member the asyncio client uses now (it moves on
        # from one that fails).
        self._channels = {e: grpc.insecure_channel(e) for e in client.endpoints}
        self._stubs = {e: rpc_pb2_grpc.KVStub(c) for e, c in self._channels.items()}  # type: ignore[no-untyped-call]

    async def load(self) -> None:
        response = await self.client.range(rpc_pb2.RangeRequest(key=self.base, range_end=prefix_end(self.base)))
        self._records = {}
        for kv in response.kvs:
            self._keep(kv)
        self._revision = int(response.header.revision)

    async def follow(self) -> None:
        """Keep the memory copy current (runs until cancelled)."""
        while True:
            try:
                async for batch in self.client.watch(self.base, prefix_end(self.base), self._revision + 1):
                    self._reachable = True
                    for event in batch.events:
                        if event.type == kv_pb2.Event.PUT:
                            self._keep(event.kv)
                        else:
                            self._records.pop(event.kv.key[len(self.base):].decode(), None)
                    self._revision = batch.revision
            except (Compacted, EtcdError) as e:
                self._reachable = False
                log.warning("event=tokens_watch_broken error=%s", e)
                await asyncio.sleep(0.5)
                try:
                    await self.load()
                    self._reachable = True
                except EtcdError:
                    continue

    def _keep(self, kv: kv_pb2.KeyValue) -> TokenRecord | None:
        try:
            record = _record(json.loads(kv.value))
        except (ValueError, KeyError, TypeError) as e:
            log.warning("event=token_unusable key=%s error=%s", kv.key.decode(errors="replace"), e)
            return None
        self._records[record.token_id] = (record, int(kv.mod_revision))
        return record

    def close(self) -> None:
        for channel in self._channels.values():
            channel.close()

    # --- TokenStore --------------------------------------------------------------

    def get(self, token_id: str) -> TokenRecord | None:
        held = self._records.get(token_id)
        if held is not None:
            return held[0]
        now = time.monotonic()
        if not self._reachable or now - self._misses.get(token_id, -_MISS_RETRY_S) < _MISS_RETRY_S:
            return None
        if len(self._misses) > 10_000:
            self._misses.clear()
        self._misses[token_id] = now
        try:
            response = self._stubs[self.client.endpoint].Range(rpc_pb2.RangeRequest(key=self._key(token_id)), timeout=self.timeout_s)
        except grpc.RpcError:
            return None
        return self._keep(response.kvs[0]) if response.kvs else None

    def list(self) -> list[TokenRecord]:
        return sorted((r for r, _ in self._records.values()), key=lambda r: (r.created_at, r.token_id))

    def add(self, record: TokenRecord) -> None:
        key = self._key(record.token_id)
        self._write(rpc_pb2.TxnRequest(
            compare=[mod_is(key, 0)],
            success=[rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=key, value=_encode(record)))]),
            record, f"token {record.token_id} exists already")  # fmt: skip

    def spend(self, token_id: str, now: dt.datetime) -> bool:
        held = self._records.get(token_id)
        if held is None or held[0].used_at is not None:
            return False
        return self._update(token_id, dataclasses.replace(held[0], used_at=now), held[1])

    def revoke(self, token_id: str) -> bool:
        held = self._records.get(token_id)
        if held is None:
            return False
        return self._update(token_id, dataclasses.replace(held[0], revoked=True), held[1])

    def _update(self, token_id: str, record: TokenRecord, revision: int) -> bool:
        key = self._key(token_id)
        request = rpc_pb2.TxnRequest(
            compare=[mod_is(key, revision)],
            success=[rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=key, value=_encode(record)))],
            failure=[rpc_pb2.RequestOp(request_range=rpc_pb2.RangeRequest(key=key))],
        )
        response = self._call(request)
        if response.succeeded:
            self._records[token_id] = (record, int(response.header.revision))
            return True
        kvs = response.responses[0].response_range.kvs
        if kvs:
            self._keep(kvs[0])  # changed by another replica: take its version
        return False

    def _write(self, request: rpc_pb2.TxnRequest, record: TokenRecord, refused: str) -> None:
        response = self._call(request)
        if not response.succeeded:
            raise TokenStoreError(refused)
        self._records[record.token_id] = (record, int(response.header.revision))

    def _call(self, request: rpc_pb2.TxnRequest) -> Any:
        if not self._reachable:
            raise TokenStoreError(f"tokens cannot be changed now: etcd {self.client.endpoint} is unreachable")
        try:
            return self._stubs[self.client.endpoint].Txn(request, timeout=self.timeout_s)
        except grpc.RpcError as e:
            raise TokenStoreError(f"tokens cannot be changed now: etcd {self.client.endpoint} did not "
                                  f"answer ({e.code().name})") from None

    async def tidy(self, now: dt.datetime, keep: dt.timedelta = TIDY_KEEP) -> int:
        """Delete tokens that expired, or were spent (one-time), more than ``keep`` ago;
        each delete compares the record's revision, so a token changed meanwhile stays.
        Runs on the one replica that owns the job ``tidy-tokens`` (``owner``)."""
        gone = 0
        for record, revision in list(self._records.values()):
            ended = [t for t in (record.expires_at, record.used_at) if t is not None]
            if not ended or now - min(ended) < keep:
                continue
            key = self._key(record.token_id)
            response = await self.client.txn([mod_is(key, revision)], [rpc_pb2.RequestOp(
                request_delete_range=rpc_pb2.DeleteRangeRequest(key=key))])  # fmt: skip
            gone += bool(response.succeeded)
        if gone:
            log.info("event=tokens_tidied deleted=%d", gone)
        return gone

    def _key(self, token_id: str) -> bytes:
        return self.base + token_id.encode()


def _encode(r: TokenRecord) -> bytes:
    return json.dumps({
        "token_id": r.token_id, "name": r.name, "role": r.role, "secret_sha256": r.secret_sha256,
        "created_at": r.created_at.isoformat(), "shard": r.shard,
        "expires_at": r.expires_at.isoformat() if r.expires_at else None, "one_time": r.one_time,
        "used_at": r.used_at.isoformat() if r.used_at else None, "revoked": r.revoked, "identity": r.identity,
    }).encode()  # fmt: skip


def _record(d: dict[str, Any]) -> TokenRecord:
    if d["role"] not in ROLES:
        raise ValueError(f"unknown role {d['role']!r}")

    def when(value: str | None) -> dt.datetime | None:
        return dt.datetime.fromisoformat(value) if value else None

    return TokenRecord(
        token_id=d["token_id"], name=d["name"], role=d["role"], secret_sha256=d["secret_sha256"],
        created_at=dt.datetime.fromisoformat(d["created_at"]), shard=d.get("shard"),
        expires_at=when(d.get("expires_at")), one_time=bool(d.get("one_time")), used_at=when(d.get("used_at")),
        revoked=bool(d.get("revoked")), identity=d.get("identity"),
    )  # fmt: skip

