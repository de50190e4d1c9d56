"""One load-generator process of ``xds-fleet``: many Envoy-like ADS nodes.

Each node is an ``testkit.ads_client.XdsClient`` on its own stream (one stream per
node, as Envoy opens; ``streams_per_channel`` nodes share one HTTP/2 connection, 1 by
default so that every node has its own connection like a real Envoy; always 1 with
mTLS, where each node presents its own certificate). A node
subscribes to clusters and listeners as wildcards, then to the endpoints and route
configurations they use, and ACKs every response (a node in ``nack_nodes`` NACKs
every route configuration after its first, to test the harness and the server's
NACK handling).

The orchestrator drives the process over a ``multiprocessing`` pipe; every command
is answered with one dict:

- ``connect``: open every node (in batches) and wait until each has ACKed
  ``targets`` (shard → type URL → version).
- ``converge``: wait until every node of the given shards has ACKed ``targets``,
  then until no response has arrived for ``quiet`` seconds; answer each node's
  last ACK time (``time.time()``, the same clock the orchestrator stamps edits with).
- ``counters``, ``stop``.

A node's ACK time is taken right after the XdsClient has written its ACK.
"""

from __future__ import annotations

import asyncio
import gc
import resource
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import grpc

from bench.procs import serve_pipe
from testkit.ads_client import Rejector, Response, XdsClient
from testkit.procs import raise_open_files_limit
from xds_server.resources import ROUTE

Targets = Mapping[str, Mapping[str, str]]  # shard -> type URL -> version

# Every node its own TCP connection: channels must not share the global subchannel pool.
# Like Envoy's HTTP/2 client, no BDP pings: gRPC's default sends one after received data.
CHANNEL_OPTIONS = (
    ("grpc.use_local_subchannel_pool", 1),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.http2.bdp_probe", 0),
)


@dataclass
class WorkerSpec:
    address: str  # one server, or several replicas' addresses (comma-separated): node-i uses the i-th mod n
    nodes: list[tuple[str, str]]  # (node_id, shard)
    delta: bool = False
    streams_per_channel: int = 1
    connect_batch: int = 500
    nack_nodes: frozenset[str] = frozenset()
    # mTLS to the control port: each node's (key PEM, certificate chain PEM), and the
    # trust bundle; None for a plaintext (--insecure) server.
    tls: dict[str, tuple[bytes, bytes]] | None = None
    bundle_pem: bytes = b""


@dataclass
class _Counters:
    bytes: int = 0
    responses: int = 0
    acks: int = 0
    nacks: int = 0


class _CountingChannel:
    """Wraps a channel so every response's size is counted before it is parsed."""

    def __init__(self, channel: grpc.aio.Channel, counters: _Counters) -> None:
        self._channel = channel
        self._counters = counters

    def stream_stream(
        self,
        method: str,
        request_serializer: Callable[[Any], bytes] | None = None,
        response_deserializer: Callable[[bytes], Any] | None = None,
    ) -> grpc.aio.StreamStreamMultiCallable[Any, Any]:
        counters = self._counters
        parse = response_deserializer

        def counted(data: bytes) -> Any:
            counters.bytes += len(data)
            return parse(data) if parse is not None else data

        return self._channel.stream_stream(
            method, request_serializer=request_serializer, response_deserializer=counted
        )

    async def close(self) -> None:
        await self._channel.close(grace=None)


@dataclass
class _Node:
    node_id: str
    shard: str
    client: XdsClient
    last_ack: float = 0.0
    done: bool = False


@dataclass
class _Goal:
    """What the worker waits for: these nodes at these versions."""

    targets: Targets
    remaining: int = 0
    reached: asyncio.Event = field(default_factory=asyncio.Event)


class Fleet:
    """The nodes of one worker process and what they have ACKed."""

    def __init__(self, spec: WorkerSpec) -> None:
        self.spec = spec
        self.counters = _Counters()
        self.nodes: dict[str, _Node] = {}
        self.channels: list[_CountingChannel] = []
        self.goal: _Goal | None = None
        self.last_response = time.monotonic()

    # -- bookkeeping -------------------------------------------------------------

    def _on_response(self, client: XdsClient, type_url: str, accepted: bool) -> None:
        now = time.time()
        self.last_response = time.monotonic()
        counters = self.counters
        counters.responses += 1
        node = self.nodes[client.node.id]
        if accepted:
            counters.acks += 1
            node.last_ack = now
        else:
            counters.nacks += 1
        goal = self.goal
        if goal is not None and not node.done:
            self._check(node, goal)

    def _check(self, node: _Node, goal: _Goal) -> None:
        target = goal.targets.get(node.shard)
        if target is None:
            return
        types = node.client.types
        for type_url, version in target.items():
            if types[type_url].version != version:
                return
        node.done = True
        goal.remaining -= 1
        if goal.remaining <= 0:
            goal.reached.set()

    def _arm(self, targets: Targets, nodes: list[_Node]) -> _Goal:
        goal = _Goal(targets)
        for node in nodes:
            node.done = False
        goal.remaining = len(nodes)
        self.goal = goal
        for node in nodes:
            self._check(node, goal)
        if goal.remaining <= 0:
            goal.reached.set()
        return goal

    def _make_reject(self, node_id: str) -> Rejector | None:
        if node_id not in self.spec.nack_nodes:
            return None
        fleet = self

        def reject(type_url: str, response: Response) -> str | None:
            state = fleet.nodes[node_id].client.types[ROUTE]
            if type_url == ROUTE and state.version:
                return f"bench: node {node_id} rejects route update (test NACK)"
            return None

        return reject

    # -- commands ----------------------------------------------------------------

    async def connect(self, targets: Targets, timeout: float) -> dict[str, Any]:
        spec = self.spec
        started = time.monotonic()
        deadline = started + timeout
        channel: _CountingChannel | None = None
        on_channel = 0
        failed: list[str] = []
        pending = list(spec.nodes)
        while pending:
            batch, pending = pending[: spec.connect_batch], pending[spec.connect_batch :]
            new: list[_Node] = []
            for node_id, shard in batch:
                if channel is None or on_channel >= spec.streams_per_channel or spec.tls is not None:
                    channel = _CountingChannel(self._channel(node_id), self.counters)
                    self.channels.append(channel)
                    on_channel = 0
                on_channel += 1
                client = XdsClient(
                    channel, node_id, shard, delta=spec.delta, keep_payloads=False,  # type: ignore[arg-type]
                    reject=self._make_reject(node_id), on_response=self._on_response,
                )  # fmt: skip
                node = _Node(node_id, shard, client)
                self.nodes[node_id] = node
                new.append(node)
            goal = self._arm(targets, new)
            for node in new:
                await node.client.start()
            remaining = deadline - time.monotonic()
            try:
                await asyncio.wait_for(goal.reached.wait(), max(0.1, remaining))
            except TimeoutError:
                failed.extend(n.node_id for n in new if not n.done)
                break
        self.goal = None
        failed.extend(node_id for node_id, _ in pending)
        return {
            "connected": len(self.nodes),
            "synced": sum(1 for n in self.nodes.values() if n.done),
            "failed": failed[:20],
            "failed_count": len(failed),
            "seconds": time.monotonic() - started,
            "errors": self._errors(),
        }

    def _channel(self, node_id: str, address: str | None = None) -> grpc.aio.Channel:
        """A new connection; with mTLS, presenting this node's own certificate."""
        spec = self.spec
        address = address or self.address_of(node_id)
        if spec.tls is None:
            return grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
        key_pem, chain_pem = spec.tls[node_id]
        creds = grpc.ssl_channel_credentials(spec.bundle_pem, key_pem, chain_pem)
        return grpc.aio.secure_channel(address, creds, options=CHANNEL_OPTIONS)

    def address_of(self, node_id: str) -> str:
        """The replica node ``node-i`` connects to: the i-th of the addresses, mod n."""
        addresses = self.spec.address.split(",")
        return addresses[int(node_id.rsplit("-", 1)[1]) % len(addresses)]

    async def failover(self, dead: str, alive: list[str]) -> dict[str, Any]:
        """The nodes on ``dead`` (killed) reconnect, spread over ``alive``, telling the
        server what they hold (as Envoy does): nothing should need sending."""
        started = time.monotonic()
        moved = [n for n in self.nodes.values() if self.address_of(n.node_id) == dead]
        for i, node in enumerate(moved):
            await node.client.stop()
            channel = _CountingChannel(self._channel(node.node_id, alive[i % len(alive)]), self.counters)
            self.channels.append(channel)
            node.client.channel = channel  # type: ignore[assignment]
            await node.client.start()
        return {"moved": len(moved), "seconds": time.monotonic() - started}

    async def converge(self, targets: Targets, timeout: float, quiet: float) -> dict[str, Any]:
        started = time.monotonic()
        deadline = started + timeout
        before = _Counters(**vars(self.counters))
        watched = [n for n in self.nodes.values() if n.shard in targets]
        # The generator is the measuring instrument: no collector pauses while it times.
        gc.disable()
        try:
            goal = self._arm(targets, watched)
            try:
                await asyncio.wait_for(goal.reached.wait(), max(0.1, deadline - time.monotonic()))
            except TimeoutError:
                pass
            # Whatever the edit still sets off (e.g. EDS re-sent after CDS) lands here.
            while (idle := time.monotonic() - self.last_response) < quiet:
                if time.monotonic() >= deadline:
                    break
                await asyncio.sleep(quiet - idle)
        finally:
            self.goal = None
            gc.enable()
        gc.collect()
        return {
            "acks": {n.node_id: n.last_ack for n in watched if n.done},
            "missing": [n.node_id for n in watched if not n.done],
            "bytes": self.counters.bytes - before.bytes,
            "responses": self.counters.responses - before.responses,
            "nacks": self.counters.nacks - before.nacks,
            "errors": self._errors(),
        }

    def snapshot_counters(self) -> dict[str, Any]:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return {
            **vars(self.counters),
            "nodes": len(self.nodes),
            "errors": self._errors(),
            "error_count": sum(1 for n in self.nodes.values() if n.client.error),
            "cpu_s": usage.ru_utime + usage.ru_stime,
            "max_rss_kib": usage.ru_maxrss,
        }

    def _errors(self) -> list[str]:
        return [f"{n.node_id}: {n.client.error!r}" for n in self.nodes.values() if n.client.error][:20]

    async def close(self) -> None:
        await asyncio.gather(*(n.client.stop() for n in self.nodes.values()), return_exceptions=True)
        await asyncio.gather(*(c.close() for c in self.channels), return_exceptions=True)


async def _serve(conn: Connection, spec: WorkerSpec) -> None:
    fleet = Fleet(spec)

    async def connect(**args: Any) -> dict[str, Any]:
        reply = await fleet.connect(**args)
        gc.collect()
        gc.freeze()  # the nodes live until the end: keep them out of collections
        return reply

    await serve_pipe(conn, {"connect": connect, "converge": fleet.converge, "failover": fleet.failover,
                            "counters": fleet.snapshot_counters}, fleet.close)  # fmt: skip


def worker_main(conn: Connection, spec: WorkerSpec) -> None:
    """The worker process's entry point (``multiprocessing``, spawn start method)."""
    raise_open_files_limit()
    try:
        asyncio.run(_serve(conn, spec))
    except (EOFError, KeyboardInterrupt):
        pass  # the orchestrator went away: nothing to answer
