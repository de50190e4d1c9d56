"""This replica's session with etcd: one lease, kept alive while the replica lives.

Everything that must go when the replica goes hangs on it: the reports of the nodes
whose sidecars are connected here (``reports``), the jobs this replica owns
(``owner``), and its own entry under ``replicas/`` (who is up, for ``/v1/replicas``).
The lease is refreshed every third of its TTL. When etcd does not answer (down, or
this replica is cut off from it) the replica keeps serving what it has, and says so
(``problem``: ``/healthz`` answers 503 with the reason); once the TTL has passed, etcd
has dropped what hung on the lease, so a new lease is granted when etcd answers again
and every listener (``on_new_lease``) puts its keys back under it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from xds_server.store.etcd_client import EtcdClient, EtcdError, LeaseKeeper

log = logging.getLogger("xds_server.ha")

Listener = Callable[[int], Awaitable[None]]

# etcd elects a new leader within a second or two: an outage shorter than this is not
# reported (writes meanwhile wait it out), a longer one refuses writes at once.
OUTAGE_AFTER_S = 3.0
RETRY_S = 0.5


class Session:
    def __init__(self, client: EtcdClient, prefix: bytes, replica_id: str, ttl_s: float,
                 info: dict[str, Any]) -> None:  # fmt: skip
        self.client = client
        self.prefix = prefix
        self.replica_id = replica_id
        self.ttl_s = max(2, round(ttl_s))
        self.info = info
        self.lease = 0
        self._keeper: LeaseKeeper = client.keep_alive()
        self._listeners: list[Listener] = []
        self._unreachable_since: float | None = None
        self._last_error = ""

    @property
    def key(self) -> bytes:
        return self.prefix + b"replicas/" + self.replica_id.encode()

    def on_new_lease(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def problem(self) -> str | None:
        """Why this replica cannot write to etcd now (None: it can, or lost it only
        just now — a leader election — and writes still try, within their deadline)."""
        if self._unreachable_since is None or time.monotonic() - self._unreachable_since < OUTAGE_AFTER_S:
            return None
        return (f"etcd unreachable for {time.monotonic() - self._unreachable_since:.0f}s "
                f"({self._last_error}); this replica serves the last state it read and refuses "
                "writes until etcd answers")  # fmt: skip

    @property
    def connected(self) -> bool:
        return self._unreachable_since is None and self.lease != 0

    async def start(self) -> None:
        """The first lease (the caller has checked that etcd answers)."""
        await self._grant()

    async def _grant(self) -> None:
        self.lease = await self.client.lease_grant(self.ttl_s)
        info = {**self.info, "replica": self.replica_id, "since": time.time()}
        await self.client.put(self.key, json.dumps(info).encode(), lease=self.lease)
        log.info("event=session_lease replica=%s lease=%x ttl_s=%d", self.replica_id, self.lease, self.ttl_s)
        for listener in self._listeners:
            await listener(self.lease)

    async def run(self) -> None:
        """Keep the lease alive until cancelled; re-grant one after an outage."""
        while True:
            # Quicker while etcd does not answer: the next attempt goes to another member.
            await asyncio.sleep(self.ttl_s / 3 if self._unreachable_since is None else RETRY_S)
            try:
                if self.lease == 0:
                    await self._grant()
                elif await self._keeper.refresh(self.lease, timeout_s=self.ttl_s / 3) <= 0:
                    log.warning("event=session_lease_expired replica=%s lease=%x", self.replica_id, self.lease)
                    self.lease = 0
                    await self._grant()
                if self._unreachable_since is not None:
                    log.info("event=etcd_reachable replica=%s after_s=%.1f", self.replica_id,
                             time.monotonic() - self._unreachable_since)  # fmt: skip
                self._unreachable_since = None
            except EtcdError as e:
                self._last_error = str(e)
                if self._unreachable_since is None:
                    self._unreachable_since = time.monotonic()
                    log.warning("event=etcd_unreachable replica=%s error=%s", self.replica_id, e)
                elif time.monotonic() - self._unreachable_since > self.ttl_s:
                    self.lease = 0  # gone in etcd by now: grant a new one when it answers

    async def close(self) -> None:
        """Revoke the lease (what hung on it goes at once, not after the TTL)."""
        self._keeper.close()
        if self.lease:
            await self.client.lease_revoke(self.lease)
            self.lease = 0
