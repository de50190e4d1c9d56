"""When ``dgw up`` may say "Data Gateway is up": when a request would succeed.

That is: Envoy listens on every public port of the shard, every cluster that serves
clients has a healthy host (a shadow target does not count: clients never see its
answers), and each HTTP listener answers a real request with something other than a
503 (Envoy's "no healthy upstream"). A listener Envoy refuses (its NACK) ends the wait
with Envoy's own message.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from envoy_proxy import AdminUnavailable, EnvoyAdmin
from xds_server.cache.status import NodeStatus
from xds_server.translate.ir import GatewayIR, HostPort

POLL_S = 0.1
REQUEST_TIMEOUT_S = 2.0
_BIND_FAILURE = re.compile(r"cannot bind '?(?P<address>[^':\s]+):(?P<port>\d+)'?: (?P<why>[^,;\n]+)")


class NotServing(Exception):
    """Envoy refused part of the config, so no wait would help."""

    def __init__(self, message: str, port: int | None = None):
        super().__init__(message)
        self.port = port


@dataclass(frozen=True)
class EnvoyView:
    """What one poll saw: Envoy's bound ports, healthy hosts per cluster, and the
    status of one real request per HTTP listener port (None: no answer)."""

    listening: frozenset[int]
    healthy_hosts: dict[str, int]
    http_status: dict[int, int | None]


def public_ports(ir: GatewayIR) -> dict[int, str]:
    """TCP port → listener name of the public listeners."""
    return {
        listener.bind.port: listener.listener
        for listener in ir.listeners
        if listener.exposure == "public" and isinstance(listener.bind, HostPort)
    }


def http_ports(ir: GatewayIR) -> list[int]:
    return sorted(
        listener.bind.port
        for listener in ir.listeners
        if listener.exposure == "public" and listener.protocol == "http" and isinstance(listener.bind, HostPort)
    )


def pending(ir: GatewayIR, view: EnvoyView) -> list[str]:
    """What still stands between a client and an answer; empty when serving."""
    waits: list[str] = []
    for port, name in sorted(public_ports(ir).items()):
        if port not in view.listening:
            waits.append(f"Envoy is not listening on port {port} ({name}) yet")
    serving = sorted({b.upstream for listener in ir.listeners if listener.exposure == "public"
                      for b in listener.backends if b.share > 0})
    for cluster in serving:
        if view.healthy_hosts.get(cluster, 0) == 0:
            waits.append(f"no healthy host in cluster {cluster} yet")
    for port in http_ports(ir):
        status = view.http_status.get(port)
        if status is None or status == 503:
            waits.append(f"a request to port {port} gets {status or 'no answer'}")
    return waits


def refused(statuses: list[NodeStatus]) -> NotServing | None:
    """The first config Envoy rejected, as a NotServing, or None."""
    for status in statuses:
        for type_status in status.types.values():
            nack = type_status.last_nack
            if nack is None or nack.version != type_status.sent_version:
                continue  # none, or an older config since replaced
            bind = _BIND_FAILURE.search(nack.message)
            if bind:
                return NotServing(
                    f"Envoy cannot listen on {bind['address']}:{bind['port']}: {bind['why'].strip()}",
                    int(bind["port"]),
                )
            return NotServing(f"Envoy rejected the config: {nack.message}")
    return None


async def observe(session: aiohttp.ClientSession, admin: EnvoyAdmin, ir: GatewayIR) -> EnvoyView:
    listening: frozenset[int] = frozenset()
    healthy: dict[str, int] = {}
    try:
        listening = await admin.listener_ports()
        healthy = await admin.healthy_hosts()
    except AdminUnavailable:
        pass  # Envoy is not up yet
    statuses: dict[int, int | None] = {}
    for port in http_ports(ir):
        try:
            async with session.get(f"http://127.0.0.1:{port}/") as r:
                statuses[port] = r.status
        except (aiohttp.ClientError, TimeoutError):
            statuses[port] = None
    return EnvoyView(listening, healthy, statuses)


async def wait_serving(
    ir: Callable[[], GatewayIR],
    envoy_admin: Path,
    nacks: Callable[[], list[NodeStatus]],
    patience_s: float,
    on_slow: Callable[[list[str]], None],
) -> None:
    """Return once a request would succeed; raise NotServing on a refused config.
    ``on_slow`` hears what is pending each time ``patience_s`` passes without success."""
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    next_note = time.monotonic() + patience_s
    async with aiohttp.ClientSession(timeout=timeout) as session, \
            EnvoyAdmin(envoy_admin, timeout_s=REQUEST_TIMEOUT_S) as admin:
        while True:
            problem = refused(nacks())
            if problem is not None:
                raise problem
            current = ir()
            waits = pending(current, await observe(session, admin, current))
            if not waits:
                return
            if time.monotonic() >= next_note:
                on_slow(waits)
                next_note = time.monotonic() + patience_s
            await asyncio.sleep(POLL_S)
