"""``dgw up``'s gateways: one sidecar (its DALs and Envoy) per shard the embedded server
serves. Those of the first start are started together; a shard that appears later
(``dgw apply`` of a new shard) gets its gateway at once, and one that goes
(``dgw delete shard``) loses it: no restart of ``dgw up`` is needed.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sidecar.config import SidecarSettings
from sidecar.log import EventLog
from sidecar.ports import PortClaims, free_port

if TYPE_CHECKING:
    from xds_server.server import XdsServer

# How often the set of served shards is compared with the gateways running (an
# in-process dict: nothing is asked of anyone).
FOLLOW_S = 0.5
STOP_TIMEOUT_S = 15.0

log = EventLog("dgw.up")


@dataclass
class _Gateway:
    task: asyncio.Task[None]
    stop: asyncio.Event
    envoy_admin_port: int


@dataclass
class Gateways:
    """The running gateways by shard. ``settings(shard, envoy_admin_port)`` makes a
    shard's sidecar settings; ``first_admin_ports`` are the Envoy admin ports of the
    shards served at start (any other shard gets a free port)."""

    server: XdsServer
    settings: Callable[[str, int], SidecarSettings]
    first_admin_ports: dict[str, int]
    claims: PortClaims = field(default_factory=PortClaims)
    running: dict[str, _Gateway] = field(default_factory=dict)

    def start(self, shard: str) -> int:
        """Start ``shard``'s gateway; its Envoy admin port."""
        from sidecar.main import run_sidecar

        port = self.first_admin_ports.get(shard) or free_port()
        stop = asyncio.Event()
        task = asyncio.create_task(run_sidecar(self.settings(shard, port), stop, self.claims),
                                   name=f"sidecar-{shard}")  # fmt: skip
        self.running[shard] = _Gateway(task, stop, port)
        return port

    def tasks(self) -> list[asyncio.Task[None]]:
        return [g.task for g in self.running.values()]

    async def stop(self, shard: str) -> None:
        gateway = self.running.pop(shard, None)
        if gateway is None:
            return
        gateway.stop.set()
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await asyncio.wait_for(gateway.task, STOP_TIMEOUT_S)

    async def stop_all(self) -> None:
        await asyncio.gather(*(self.stop(shard) for shard in list(self.running)))

    async def follow(self, stop: asyncio.Event, serving: Callable[[str, int], Any],
                     busy: Callable[[str], list[str]]) -> None:  # fmt: skip
        """Until ``stop``: start the gateway of each shard that appears (once ``busy``
        finds none of its ports held; ``serving(shard, admin_port)`` is awaited and
        says when it serves), stop the gateway of each shard that goes, and drop one
        that failed, saying why."""
        refused: set[str] = set()
        waiters: set[asyncio.Task[None]] = set()
        try:
            while not stop.is_set():
                served = set(self.server.registry.shards)
                refused &= served
                for shard in sorted(served - set(self.running) - refused):
                    problems = busy(shard)
                    if problems:
                        refused.add(shard)
                        for line in problems:
                            print(f"dgw up: shard {shard}: {line}", file=sys.stderr, flush=True)
                        continue
                    log.info("gateway_starting", shard=shard, reason="new shard")
                    waiter = asyncio.create_task(self._announce(shard, self.start(shard), serving))
                    waiters.add(waiter)
                    waiter.add_done_callback(waiters.discard)
                for shard in sorted(set(self.running) - served):
                    log.info("gateway_stopping", shard=shard, reason="shard removed")
                    await self.stop(shard)
                for shard, gateway in list(self.running.items()):
                    if gateway.task.done() and not gateway.stop.is_set():
                        error = gateway.task.exception() if not gateway.task.cancelled() else None
                        print(f"dgw up: shard {shard}: its gateway stopped: {error or 'cancelled'}",
                              file=sys.stderr, flush=True)  # fmt: skip
                        del self.running[shard]
                        refused.add(shard)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), FOLLOW_S)
        finally:
            for waiter in list(waiters):
                waiter.cancel()

    async def _announce(self, shard: str, admin_port: int, serving: Callable[[str, int], Any]) -> None:
        try:
            await serving(shard, admin_port)
        except Exception as e:  # a shard's gateway that never serves is said, not fatal
            print(f"dgw up: shard {shard}: not serving: {e}", file=sys.stderr, flush=True)
