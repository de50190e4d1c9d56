"""The snapshot cache: immutable, pre-encoded snapshots per shard, per-node endpoint
overrides, and the status of every connected node. It knows nothing of the xDS wire
protocol; ``xds_server.ads`` serves it."""

from xds_server.cache.snapshot import (
    WILDCARD_TYPES,
    EncodedResource,
    Snapshot,
    TypeSnapshot,
    build_snapshot,
)
from xds_server.cache.status import Nack, NodeStatus, StreamKind, StreamStatus, TypeStatus
from xds_server.cache.store import CacheStats, SnapshotCache, Watch
from xds_server.cache.versions import EMPTY_VERSION, content_version, set_version

__all__ = [
    "EMPTY_VERSION",
    "WILDCARD_TYPES",
    "CacheStats",
    "EncodedResource",
    "Nack",
    "NodeStatus",
    "Snapshot",
    "SnapshotCache",
    "StreamKind",
    "StreamStatus",
    "TypeSnapshot",
    "TypeStatus",
    "Watch",
    "build_snapshot",
    "content_version",
    "set_version",
]
