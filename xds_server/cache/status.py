"""What each connected node has been sent, has ACKed and has rejected.

The ADS streams record events here; the admin API and the benchmarks read
``NodeStatus`` copies. A ``StreamStatus`` lives exactly as long as its stream: the
cache drops it on disconnect, so the table never outgrows the connected fleet.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from xds_server.cache.snapshot import Snapshot

StreamKind = Literal["sotw", "delta"]


@dataclass(frozen=True, slots=True)
class Nack:
    """The last response a node rejected for one type, with Envoy's own message."""

    version: str
    message: str
    at: datetime


@dataclass(frozen=True, slots=True)
class TypeStatus:
    """One type on one stream.

    ``acked_version`` is what the node last accepted (or reported having when it
    connected). For types requested by name (EDS, RDS, SDS) over state of the world, a
    version covers the requested resources only, so it matches ``shard_versions()``
    only when the node requests every resource of the type.
    """

    type_url: str
    sent_version: str | None = None
    acked_version: str | None = None
    last_nack: Nack | None = None


@dataclass(frozen=True, slots=True)
class NodeStatus:
    """One connected stream of one node (a node may briefly hold two while reconnecting)."""

    shard: str
    node_id: str
    stream: StreamKind
    connected_since: datetime
    types: dict[str, TypeStatus] = field(default_factory=dict)
    # What the stream would have the node hold per type, as of the view it last
    # worked from (``evaluated``: that view's per-type versions). ``xds_server.status``
    # compares them with the cache's current view to tell SYNCED from STALE.
    due: dict[str, str] = field(default_factory=dict)
    evaluated: dict[str, str] = field(default_factory=dict)

    def type_status(self, type_url: str) -> TypeStatus:
        """The status of one type (empty if the node has not asked for it)."""
        return self.types.get(type_url) or TypeStatus(type_url)


class StreamStatus:
    """The mutable record one stream keeps while it is connected."""

    __slots__ = ("_due", "_evaluated", "_sent_at", "_types", "connected_since", "kind", "node_id", "shard")

    def __init__(self, shard: str, node_id: str, kind: StreamKind) -> None:
        self.shard = shard
        self.node_id = node_id
        self.kind: StreamKind = kind
        self.connected_since = datetime.now(UTC)
        self._types: dict[str, TypeStatus] = {}
        self._due: dict[str, str] = {}
        self._sent_at: dict[str, float] = {}
        self._evaluated: Snapshot | None = None

    def _get(self, type_url: str) -> TypeStatus:
        return self._types.get(type_url) or TypeStatus(type_url)

    # TypeStatus is frozen: each event swaps in a new one, so a NodeStatus handed out
    # earlier never changes under its reader.
    def record_sent(self, type_url: str, version: str) -> None:
        s = self._get(type_url)
        self._types[type_url] = TypeStatus(type_url, version, s.acked_version, s.last_nack)
        self._sent_at[type_url] = time.monotonic()

    def record_ack(self, type_url: str, version: str) -> None:
        s = self._get(type_url)
        self._types[type_url] = TypeStatus(type_url, s.sent_version, version, s.last_nack)

    def record_nack(self, type_url: str, version: str, message: str) -> None:
        s = self._get(type_url)
        nack = Nack(version, message, datetime.now(UTC))
        self._types[type_url] = TypeStatus(type_url, s.sent_version, s.acked_version, nack)

    def record_due(self, type_url: str, version: str | None) -> None:
        """The version of ``type_url`` the node should end up with (sent or not yet);
        None: the one last sent (nothing more is due)."""
        if version is None:
            sent = self._get(type_url).sent_version
            if sent is None:
                return
            version = sent
        self._due[type_url] = version

    def record_evaluated(self, view: Snapshot) -> None:
        """The view the stream last decided its responses from."""
        self._evaluated = view

    def sent_version(self, type_url: str) -> str | None:
        return self._get(type_url).sent_version

    def sent_at(self, type_url: str) -> float | None:
        """When (``time.monotonic()``) the latest response of the type was sent."""
        return self._sent_at.get(type_url)

    def snapshot(self) -> NodeStatus:
        evaluated = self._evaluated.versions() if self._evaluated is not None else {}
        return NodeStatus(
            self.shard, self.node_id, self.kind, self.connected_since, dict(self._types),
            dict(self._due), evaluated,
        )
