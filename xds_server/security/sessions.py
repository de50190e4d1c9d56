"""The long-lived streams each caller holds on the control channel (ADS, ``WatchConfig``):
at most ``limit`` per identity, and a way to end every stream of a node at once.

An identity here is what a caller cannot change by itself: a gateway certificate's
SPIFFE ID and node (its CN; the node it claims when the certificate binds none), an
application's SPIFFE ID and the host it connects from (many instances of one
application share its identity, each on its own host). An Envoy holds one ADS stream
and its sidecar one ``WatchConfig``; a client that opens hundreds is refused with
``RESOURCE_EXHAUSTED`` naming the setting, and the streams it has keep working.

A revoked node (``revocations.py``) loses every stream it holds: ``end`` marks each
lease ended and wakes its stream, which closes with ``PERMISSION_DENIED``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import grpc


@dataclass(frozen=True)
class Ended:
    """Why a stream must close now."""

    code: grpc.StatusCode
    message: str


class Lease:
    """One admitted stream. ``ended`` is set (and ``wake`` called) when it must close;
    ``release`` gives its slot back (call it once, when the stream is over)."""

    __slots__ = ("_sessions", "ended", "key", "node", "wake")

    def __init__(self, sessions: Sessions, key: str | None, node: tuple[str, str], wake: Callable[[], None]):
        self._sessions = sessions
        self.key = key
        self.node = node
        self.wake = wake
        self.ended: Ended | None = None

    def release(self) -> None:
        self._sessions.release(self)


class Sessions:
    """Open streams by identity (for the cap) and by (shard, node) (to end them)."""

    def __init__(self, limit: int, setting: str = "AdsLimits.max_streams_per_identity") -> None:
        self.limit = limit
        self.setting = setting
        self._count: dict[str, int] = {}
        self._by_node: dict[tuple[str, str], set[Lease]] = {}

    def admit(self, key: str | None, shard: str, node: str, wake: Callable[[], None]) -> Lease | Ended:
        """A lease for a new stream of ``key`` (None: not capped, e.g. ``--insecure``),
        or why not."""
        if key is not None:
            held = self._count.get(key, 0)
            if held >= self.limit:
                return Ended(grpc.StatusCode.RESOURCE_EXHAUSTED,
                             f"{key} already holds {held} streams, the most one identity may "
                             f"({self.setting}); close some, or raise the setting")  # fmt: skip
            self._count[key] = held + 1
        lease = Lease(self, key, (shard, node), wake)
        self._by_node.setdefault(lease.node, set()).add(lease)
        return lease

    def release(self, lease: Lease) -> None:
        held = self._by_node.get(lease.node)
        if held is None or lease not in held:
            return
        held.discard(lease)
        if not held:
            del self._by_node[lease.node]
        if lease.key is not None:
            left = self._count[lease.key] - 1
            if left:
                self._count[lease.key] = left
            else:
                del self._count[lease.key]

    def end(self, shard: str, node: str, why: Ended) -> int:
        """End every stream (shard, node) holds; how many there were."""
        leases = list(self._by_node.get((shard, node), ()))
        for lease in leases:
            lease.ended = why
            lease.wake()
        return len(leases)

    def held(self, key: str) -> int:
        return self._count.get(key, 0)
