"""The snapshot cache: one snapshot per shard, per-node endpoint overrides, and the
registry of connected streams (how to wake each one, and its status).

Everything here is synchronous and must be called from the event loop thread that
runs the ADS server: a change wakes the affected streams by calling their ``wake``
callback (which sets an ``asyncio.Event``), and each woken stream reads the latest
view itself. Fan-out therefore costs one callback per affected stream and no copying;
a burst of edits before a stream runs is coalesced into one push of the latest state.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from envoy.config.endpoint.v3.endpoint_pb2 import ClusterLoadAssignment
from google.protobuf.message import Message

from xds_server.cache.snapshot import (
    EncodedResource,
    Snapshot,
    TypeSnapshot,
    build_snapshot,
    build_type,
    encode_all,
    overlay,
)
from xds_server.cache.status import NodeStatus, StreamKind, StreamStatus
from xds_server.cache.versions import set_version
from xds_server.resources import ENDPOINT, PUSH_ORDER, SHORT_NAMES, Resources

log = logging.getLogger("xds_server.cache")


class Watch:
    """One connected stream's registration: how to wake it, where it records status."""

    __slots__ = ("node_id", "shard", "status", "wake")

    def __init__(
        self, shard: str, node_id: str, kind: StreamKind, wake: Callable[[], None]
    ) -> None:
        self.shard = shard
        self.node_id = node_id
        self.wake = wake
        self.status = StreamStatus(shard, node_id, kind)


@dataclass(frozen=True, slots=True)
class CacheStats:
    """Sizes of the cache's tables (for metrics, and to prove nothing leaks)."""

    shards: int
    endpoint_overrides: int
    watched_nodes: int
    streams: int


class _NodeEndpoints:
    """A node's own ClusterLoadAssignments, overlaid on its shard's default EDS."""

    __slots__ = ("_base", "_view", "resources", "version")

    def __init__(self, resources: dict[str, EncodedResource]) -> None:
        self.resources = resources
        self.version = set_version((n, r.version) for n, r in resources.items())
        self._base: Snapshot | None = None
        self._view: Snapshot | None = None

    def view(self, shard_snapshot: Snapshot) -> Snapshot:
        # Rebuilt once per shard snapshot; when the shard's EDS did not change the
        # merged EDS type (and the response bodies memoized on it) is kept.
        if self._base is shard_snapshot and self._view is not None:
            return self._view
        merged: TypeSnapshot | None = None
        unchanged = self._base is not None and self._base[ENDPOINT] is shard_snapshot[ENDPOINT]
        if unchanged and self._view is not None:
            merged = self._view[ENDPOINT]
        if merged is None:
            merged = overlay(shard_snapshot[ENDPOINT], self.resources)
        self._base = shard_snapshot
        self._view = shard_snapshot.replace(merged)
        return self._view


class SnapshotCache:
    """Shard snapshots, per-node EDS overrides and the connected streams' status."""

    def __init__(self) -> None:
        self._shards: dict[str, Snapshot] = {}
        self._endpoints: dict[str, dict[str, _NodeEndpoints]] = {}
        self._watches: dict[str, dict[str, list[Watch]]] = {}

    # -- configuration -------------------------------------------------------------

    def set_shard(self, shard: str, resources: Resources) -> bool:
        """Replace a shard's resources; True (and its streams woken) if anything changed.

        EDS in ``resources`` is the default for nodes without endpoints of their own.
        """
        previous = self._shards.get(shard)
        snapshot = build_snapshot(resources, previous)
        if previous is not None and all(snapshot[t] is previous[t] for t in PUSH_ORDER):
            return False
        self._install(shard, snapshot)
        return True

    def update_resources(self, shard: str, type_url: str, changed: Mapping[str, Message]) -> bool:
        """Replace or add some resources of one type, encoding only those; the shard's
        other resources are kept as they are. True (and streams woken) if anything changed."""
        previous = self._shards.get(shard)
        if previous is None:
            return self.set_shard(shard, Resources({type_url: dict(changed)}))
        old = previous[type_url]
        encoded = dict(old.resources)
        encoded.update(encode_all(type_url, changed, old.resources))
        built = build_type(type_url, encoded, old)
        if built is old:
            return False
        self._install(shard, previous.replace(built))
        return True

    def _install(self, shard: str, snapshot: Snapshot) -> None:
        self._shards[shard] = snapshot
        log.info(
            "event=snapshot shard=%s %s",
            shard,
            " ".join(f"{SHORT_NAMES[t]}={snapshot[t].version}" for t in PUSH_ORDER),
        )
        for watches in self._watches.get(shard, {}).values():
            for watch in watches:
                watch.wake()

    def set_node_endpoints(
        self,
        shard: str,
        node_id: str,
        endpoints: Mapping[str, ClusterLoadAssignment] | None,
    ) -> bool:
        """Give one node its own ClusterLoadAssignments; ``None`` returns it to the default.

        The override is by cluster name: a cluster the node has no entry for keeps the
        shard's default endpoints, so a node can never lose EDS for a cluster it uses.
        It lives until it is cleared or its shard is removed, whether or not the node
        is connected (the caller owns registrations; a reconnecting node gets it back).
        Only that node's streams are woken.
        """
        nodes = self._endpoints.get(shard)
        old = nodes.get(node_id) if nodes is not None else None
        if endpoints is None:
            if old is None:
                return False
            del self._endpoints[shard][node_id]
            if not self._endpoints[shard]:
                del self._endpoints[shard]
        else:
            entry = _NodeEndpoints(
                encode_all(ENDPOINT, endpoints, old.resources if old is not None else None)
            )
            if old is not None and old.version == entry.version:
                return False
            self._endpoints.setdefault(shard, {})[node_id] = entry
        log.debug(
            "event=node_endpoints shard=%s node=%s version=%s",
            shard,
            node_id,
            "default" if endpoints is None else self._endpoints[shard][node_id].version,
        )
        for watch in self._watches.get(shard, {}).get(node_id, ()):
            watch.wake()
        return True

    def remove_shard(self, shard: str) -> None:
        """Forget a shard's snapshot and its nodes' endpoint overrides.

        Connected nodes of the shard keep what they have (taking all config away from a
        live Envoy would drop its listeners) and wait until the shard is set again.
        """
        self._shards.pop(shard, None)
        self._endpoints.pop(shard, None)
        log.info("event=shard_removed shard=%s", shard)

    # -- reading -------------------------------------------------------------------

    def view(self, shard: str, node_id: str) -> Snapshot | None:
        """What ``node_id`` should have: its shard's snapshot with its own EDS, or None."""
        snapshot = self._shards.get(shard)
        if snapshot is None:
            return None
        nodes = self._endpoints.get(shard)
        entry = nodes.get(node_id) if nodes is not None else None
        return snapshot if entry is None else entry.view(snapshot)

    def shard_versions(self, shard: str) -> dict[str, str]:
        """Per-type versions of the shard's default snapshot; empty if the shard is unknown."""
        snapshot = self._shards.get(shard)
        return snapshot.versions() if snapshot is not None else {}

    def node_status(self, shard: str | None = None) -> list[NodeStatus]:
        """One entry per connected stream (of ``shard`` if given); a stream's entry goes
        when it disconnects."""
        shards = self._watches.values() if shard is None else [self._watches.get(shard, {})]
        return [
            watch.status.snapshot()
            for nodes in shards
            for watches in nodes.values()
            for watch in watches
        ]

    def stats(self) -> CacheStats:
        return CacheStats(
            shards=len(self._shards),
            endpoint_overrides=sum(len(n) for n in self._endpoints.values()),
            watched_nodes=sum(len(n) for n in self._watches.values()),
            streams=sum(len(w) for n in self._watches.values() for w in n.values()),
        )

    # -- streams -------------------------------------------------------------------

    def connect(
        self, shard: str, node_id: str, kind: StreamKind, wake: Callable[[], None]
    ) -> Watch:
        """Register a stream; ``wake`` is called whenever what the node should have changes."""
        watch = Watch(shard, node_id, kind, wake)
        self._watches.setdefault(shard, {}).setdefault(node_id, []).append(watch)
        return watch

    def disconnect(self, watch: Watch) -> None:
        """Unregister a stream and free its per-node entries."""
        nodes = self._watches.get(watch.shard)
        if nodes is None:
            return
        watches = nodes.get(watch.node_id)
        if watches is None or watch not in watches:
            return
        watches.remove(watch)
        if not watches:
            del nodes[watch.node_id]
            if not nodes:
                del self._watches[watch.shard]
