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
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sidecar.config import SidecarSettings
from sidecar.log import EventLog
from sidecar.ports import PortClaims

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
    envoy_admin: Path  # its Envoy's admin socket (owner-only, in the sidecar's state dir)


@dataclass
class Gateways:
    """The running gateways by shard. ``settings(shard)`` makes a shard's sidecar
    settings."""

    server: XdsServer
    settings: Callable[[str], SidecarSettings]
    claims: PortClaims = field(default_factory=PortClaims)
    running: dict[str, _Gateway] = field(default_factory=dict)

    def start(self, shard: str) -> Path:
        """Start ``shard``'s gateway; where its Envoy's admin socket is."""
        from sidecar.main import envoy_admin_socket, run_sidecar

        settings = self.settings(shard)
        stop = asyncio.Event()
        task = asyncio.create_task(run_sidecar(settings, stop, self.claims), name=f"sidecar-{shard}")
        admin = envoy_admin_socket(settings)
        self.running[shard] = _Gateway(task, stop, admin)
        return admin

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

    async def follow(self, stop: asyncio.Event, serving: Callable[[str, Path], Any],
                     busy: Callable[[str], list[str]]) -> None:  # fmt: skip
        """Until ``stop``: start the gateway of each shard that appears (once ``busy``
        finds none of its ports held; ``serving(shard, envoy_admin)`` is awaited and
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

    async def _announce(self, shard: str, admin: Path, serving: Callable[[str, Path], Any]) -> None:
        try:
            await serving(shard, admin)
        except Exception as e:  # a shard's gateway that never serves is said, not fatal
            print(f"dgw up: shard {shard}: not serving: {e}", file=sys.stderr, flush=True)
