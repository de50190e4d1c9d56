"""Work that must happen once, whatever the number of replicas, has one owner.

A job's owner is the replica whose session lease holds ``owners/<job>``: each replica
tries to create the key (a transaction: only if it does not exist), and the one that
did runs the job; the others watch the key. When the owner dies or is cut off from
etcd, its lease expires, etcd deletes the key, and the first of the others to create
it again takes over. An owner that loses its lease (or sees the key go) stops the job
at once, so two replicas never run it together for longer than the lease allows.

What runs this way: the tidying of spent and expired tokens (``EtcdTokenStore.tidy``).
Other once-only work (a migration's backfill) takes an ``Owner`` of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from etcd_api import kv_pb2
from xds_server.ha.session import Session
from xds_server.store.etcd_client import EtcdClient, EtcdError, absent, get, put

log = logging.getLogger("xds_server.ha.owner")

_RETRY_S = 0.5


class Owner:
    def __init__(self, client: EtcdClient, prefix: bytes, session: Session, job: str,
                 work: Callable[[], Coroutine[Any, Any, None]]) -> None:  # fmt: skip
        self.client = client
        self.key = prefix + b"owners/" + job.encode()
        self.session = session
        self.job = job
        self.work = work
        self.holding = False

    async def run(self) -> None:
        while True:
            lease = self.session.lease
            if not lease:
                await asyncio.sleep(_RETRY_S)
                continue
            me = self.session.replica_id.encode()
            try:
                response = await self.client.txn([absent(self.key)], [put(self.key, me, lease)], [get(self.key)])
            except EtcdError:
                await asyncio.sleep(_RETRY_S)
                continue
            held = response.responses[0].response_range.kvs if not response.succeeded else ()
            if response.succeeded or (held and held[0].value == me and held[0].lease == lease):
                await self._own(lease, int(response.header.revision))
            else:
                await self._wait_for_release(int(response.header.revision))

    async def _own(self, lease: int, revision: int) -> None:
        self.holding = True
        log.info("event=owner_acquired job=%s replica=%s", self.job, self.session.replica_id)
        job = asyncio.create_task(self.work(), name=f"owned-{self.job}")
        lost = asyncio.create_task(self._lost(lease, revision))
        try:
            await asyncio.wait({job, lost}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (job, lost):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            self.holding = False
            log.info("event=owner_released job=%s replica=%s", self.job, self.session.replica_id)

    async def _lost(self, lease: int, revision: int) -> None:
        """Returns when this replica no longer holds the job: its lease changed, or
        the key went (or cannot be watched: better to stop than to run twice)."""
        async def watch() -> None:
            with contextlib.suppress(EtcdError):
                async for batch in self.client.watch(self.key, b"", revision + 1):
                    if any(e.type == kv_pb2.Event.DELETE for e in batch.events):
                        return

        watching = asyncio.create_task(watch())
        try:
            while self.session.lease == lease and not watching.done():
                await asyncio.wait({watching}, timeout=_RETRY_S)
        finally:
            watching.cancel()

    async def _wait_for_release(self, revision: int) -> None:
        with contextlib.suppress(EtcdError):
            async for batch in self.client.watch(self.key, b"", revision + 1):
                if any(e.type == kv_pb2.Event.DELETE for e in batch.events):
                    return
        await asyncio.sleep(_RETRY_S)
