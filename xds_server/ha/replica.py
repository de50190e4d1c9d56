"""What makes an xds_server one replica among several (``dgw server --store etcd://...``).

Every replica serves xDS from its own deterministic snapshots (versions are content
hashes, equal on every replica), so any replica serves any node, and an Envoy that
reconnects to another is sent nothing it holds. Through etcd they share:

- the config store (``EtcdStore``) — each replica follows its changes
  (``Changes.follow``), so an edit through one reaches every node of every replica;
- node reports, under leases (``reports``);
- tokens (``tokens``);
- one owner for each job that must run once (``owner``).

etcd unreachable: the replica keeps serving what it last read, refuses writes with
503 and the reason, says so in ``/healthz``, and catches up when etcd returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import socket
from collections.abc import Coroutine
from typing import Any

from xds_server.ha.owner import Owner
from xds_server.ha.reports import LeasedReports
from xds_server.ha.session import Session
from xds_server.ha.tokens import TIDY_EVERY_S, EtcdTokenStore
from xds_server.shards import ShardRegistry
from xds_server.store.etcd import EtcdStore

log = logging.getLogger("xds_server.ha")


def default_replica_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class Replica:
    def __init__(self, store: EtcdStore, session: Session, reports: LeasedReports, tokens: EtcdTokenStore,
                 owners: list[Owner], reports_revision: int) -> None:  # fmt: skip
        self.store = store
        self.session = session
        self.reports = reports
        self.tokens = tokens
        self.owners = owners
        self._reports_revision = reports_revision

    @classmethod
    async def join(cls, store: EtcdStore, registry: ShardRegistry, *, replica_id: str, lease_ttl_s: float,
                   report_ttl_s: float, info: dict[str, Any]) -> Replica:  # fmt: skip
        """Take a session, load every node's report and every token (before this
        replica serves anything)."""
        session = Session(store.client, store.prefix, replica_id, lease_ttl_s, info)
        reports = LeasedReports(store.client, store.prefix, session, registry,
                                orphan_ttl_s=lease_ttl_s, connectionless_ttl_s=report_ttl_s)  # fmt: skip
        registry.liveness = reports
        store.refuse_writes = session.problem
        await session.start()
        revision = await reports.load()
        tokens = EtcdTokenStore(store.client, store.prefix)
        await tokens.load()

        async def tidy_tokens() -> None:
            while True:
                await tokens.tidy(dt.datetime.now(dt.UTC))
                await asyncio.sleep(TIDY_EVERY_S)

        owners = [Owner(store.client, store.prefix, session, "tidy-tokens", tidy_tokens)]
        return cls(store, session, reports, tokens, owners, revision)

    def tasks(self) -> list[Coroutine[Any, Any, None]]:
        """What runs for as long as the replica does."""
        return [self.session.run(), self.reports.run(self._reports_revision), self.tokens.follow(),
                *(owner.run() for owner in self.owners)]  # fmt: skip

    def problem(self) -> str | None:
        return self.session.problem()

    def status(self) -> dict[str, Any]:
        return {
            "replica": self.session.replica_id,
            "store": self.store.url,
            "etcd_endpoint": self.store.client.endpoint,
            "lease_ttl_s": self.session.ttl_s,
            "connected_to_etcd": self.session.connected,
            "problem": self.problem(),
            "owns": sorted(o.job for o in self.owners if o.holding),
        }

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.session.close()
        self.tokens.close()
