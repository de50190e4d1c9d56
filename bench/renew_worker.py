"""The renewal load of ``xds-fleet --renew-rate``: gateway hosts renewing certificates.

Each identity is one host of the fleet (a shard, a node id, its key and certificate).
A renewal is what a sidecar does at half its certificate's lifetime: a new key and CSR
(made before the timed phases, as they cost the host, not the server), an mTLS
connection to the control port with the current certificate, ``SignCertificate``,
and the new certificate replaces the old one (so the next renewal of that host
presents it). Each renewal opens its own connection: a sidecar that renews opens a
new channel with the new certificate, so the server pays one handshake per renewal
either way.

Commands over the ``multiprocessing`` pipe, each answered with one dict:

- ``storm``: renew ``count`` hosts as fast as ``concurrency`` calls in flight allow,
  each over a new connection, or over the hosts' connections ``connect`` opened (the
  call alone, without a handshake: as a sidecar renews);
- ``connect``: open the next ``count`` hosts' connections, each with its certificate;
  ``disconnect``: close them;
- ``start``: renew at ``rate`` per second, paced, in the background (at most
  ``concurrency`` in flight; a tick that finds them all busy is counted as ``behind``);
- ``finish``: stop the paced renewals, wait for those in flight, answer their figures;
- ``stop``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import grpc

from bench.procs import serve_pipe
from bench.report import percentile
from dgw_api.v1 import gateway_pb2, gateway_pb2_grpc
from xds_server.security.keys import make_csr, new_private_key, private_key_pem


@dataclass
class Identity:
    shard: str
    node_id: str
    key_pem: bytes
    chain_pem: bytes


@dataclass
class RenewSpec:
    address: str
    bundle_pem: bytes
    identities: list[Identity]
    concurrency: int = 8
    rpc_timeout: float = 10.0


@dataclass
class _Tally:
    started: float = field(default_factory=time.monotonic)
    done: int = 0
    behind: int = 0
    latencies: list[float] = field(default_factory=list)  # ms
    errors: list[str] = field(default_factory=list)
    error_count: int = 0

    def answer(self) -> dict[str, Any]:
        return {
            "renewed": self.done, "errors": self.errors[:10], "error_count": self.error_count,
            "behind": self.behind, "seconds": time.monotonic() - self.started,
            "p50_ms": percentile(self.latencies, 50), "p99_ms": percentile(self.latencies, 99),
        }  # fmt: skip


class Renewer:
    def __init__(self, spec: RenewSpec) -> None:
        self.spec = spec
        self.current = list(spec.identities)
        self.next = 0  # the host whose turn it is
        self.fresh: list[tuple[bytes, bytes]] = []  # (key PEM, CSR PEM), made ahead
        self._paced: asyncio.Task[None] | None = None
        self._tally = _Tally()
        self._in_flight: set[asyncio.Task[None]] = set()
        self._open: dict[int, grpc.aio.Channel] = {}  # host index → its open connection

    @property
    def renewed(self) -> int:
        """Renewals done by the paced run under way (or the last one)."""
        return self._tally.done

    def prepare(self, count: int) -> None:
        """Keys and CSRs for the next ``count`` renewals (the hosts' work, done now)."""
        for _ in range(count):
            key = new_private_key()
            # Asking for no name: the server grants the host's own identity (any shard's).
            self.fresh.append((private_key_pem(key), make_csr(key, None)))

    def _channel(self, host: Identity) -> grpc.aio.Channel:
        creds = grpc.ssl_channel_credentials(self.spec.bundle_pem, host.key_pem, host.chain_pem)
        return grpc.aio.secure_channel(self.spec.address, creds, options=(("grpc.use_local_subchannel_pool", 1),))

    async def connect(self, count: int, timeout: float) -> dict[str, Any]:
        """Open the connections of the next ``count`` hosts (each with its certificate)."""
        for k in range(count):
            i = (self.next + k) % len(self.current)
            if i not in self._open:
                self._open[i] = self._channel(self.current[i])
        await asyncio.wait_for(asyncio.gather(*(c.channel_ready() for c in self._open.values())), timeout)
        return {"connected": len(self._open)}

    async def _renew_one(self, tally: _Tally) -> None:
        i = self.next % len(self.current)
        self.next += 1
        host = self.current[i]
        if not self.fresh:
            self.prepare(1)
        key_pem, csr_pem = self.fresh.pop(0)
        held = self._open.get(i)
        started = time.monotonic()
        try:
            async with contextlib.AsyncExitStack() as stack:
                channel = held if held is not None else await stack.enter_async_context(self._channel(host))
                stub = gateway_pb2_grpc.GatewayStub(channel)  # type: ignore[no-untyped-call]
                reply = await stub.SignCertificate(
                    gateway_pb2.SignRequest(shard=host.shard, node_id=host.node_id, csr_pem=csr_pem),
                    timeout=self.spec.rpc_timeout,
                )
        except grpc.aio.AioRpcError as e:
            tally.error_count += 1
            tally.errors.append(f"{host.node_id}: {e.code().name}: {e.details()}")
            return
        tally.latencies.append((time.monotonic() - started) * 1000)
        tally.done += 1
        self.current[i] = Identity(host.shard, host.node_id, key_pem, reply.certificate_chain_pem)

    async def storm(self, count: int, timeout: float) -> dict[str, Any]:
        self.prepare(max(0, count - len(self.fresh)))
        tally = _Tally()
        gate = asyncio.Semaphore(self.spec.concurrency)

        async def one() -> None:
            async with gate:
                await self._renew_one(tally)

        tasks = [asyncio.create_task(one()) for _ in range(count)]
        _, pending = await asyncio.wait(tasks, timeout=timeout)
        for task in pending:
            task.cancel()
        tally.error_count += len(pending)
        return tally.answer()

    async def disconnect(self) -> dict[str, Any]:
        channels, self._open = list(self._open.values()), {}
        await asyncio.gather(*(c.close(None) for c in channels), return_exceptions=True)
        return {"closed": len(channels)}

    def start(self, rate: float, prepare: int) -> dict[str, Any]:
        self.prepare(max(0, prepare - len(self.fresh)))
        self._tally = _Tally()
        self._paced = asyncio.create_task(self._pace(rate, self._tally))
        return {"started": True}

    async def _pace(self, rate: float, tally: _Tally) -> None:
        interval = 1.0 / rate
        tick = time.monotonic()
        while True:
            tick += interval
            if len(self._in_flight) >= self.spec.concurrency:
                tally.behind += 1
            else:
                task = asyncio.create_task(self._renew_one(tally))
                self._in_flight.add(task)
                task.add_done_callback(self._in_flight.discard)
            await asyncio.sleep(max(0.0, tick - time.monotonic()))

    async def finish(self) -> dict[str, Any]:
        if self._paced is not None:
            self._paced.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._paced
            self._paced = None
        if self._in_flight:
            await asyncio.wait(list(self._in_flight), timeout=self.spec.rpc_timeout + 1)
        return self._tally.answer()


async def _serve(conn: Connection, spec: RenewSpec) -> None:
    renewer = Renewer(spec)

    async def close() -> None:
        await renewer.finish()
        await renewer.disconnect()

    await serve_pipe(conn, {
        "storm": renewer.storm, "connect": renewer.connect, "disconnect": renewer.disconnect,
        "start": renewer.start, "finish": renewer.finish,
    }, close)  # fmt: skip


def renew_main(conn: Connection, spec: RenewSpec) -> None:
    """The renewal process's entry point (``multiprocessing``, spawn start method)."""
    try:
        asyncio.run(_serve(conn, spec))
    except (EOFError, KeyboardInterrupt):
        pass
