"""State-of-the-world ADS: the per-stream protocol state machine.

Lock-step per type: a type is answered only while the node has a request for it
outstanding (its first request, or its ACK/NACK of our latest response), so a node
never has two responses of one type in flight and a burst of edits coalesces into one
response of the latest state. Per type the stream keeps only versions, a nonce and
the requested names (shared between streams); resources stay in the snapshot.

Rules, from Envoy's xds_protocol:
- A request whose ``response_nonce`` is not the latest nonce sent for its type is
  stale (Envoy has not seen our latest response yet) and is ignored outright.
- A request whose ``version_info`` equals what we would send gets no response until
  something changes; versions are content hashes, so this holds across control plane
  restarts.
- A NACK (``error_detail`` set) is recorded and the rejected version is never sent
  again on this stream; the node keeps its last ACKed version and waits for a newer one.
- Types are answered in ``PUSH_ORDER``; if an earlier type has a change it cannot send
  yet (its previous response is still unacknowledged), later types wait for it, so a
  node never gets a listener before the cluster it points at.
- After a CDS response the next EDS answer is sent even if EDS did not change:
  Envoy re-requests EDS for a modified cluster with the same names and version and
  keeps the cluster warming until it gets an answer.
- Removed clusters and listeners simply disappear from the next full CDS/LDS response.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from envoy.service.discovery.v3.discovery_pb2 import DiscoveryRequest

from xds_server.ads.events import KNOWN_TYPES, Outgoing, Received
from xds_server.ads.wire import sotw_body, sotw_response
from xds_server.cache.snapshot import WILDCARD_TYPES, Snapshot
from xds_server.cache.status import StreamStatus
from xds_server.resources import CLUSTER, ENDPOINT, PUSH_ORDER


class NameSets:
    """Interns requested name sets, so the nodes of a shard (which ask for the same
    clusters' endpoints) share one frozenset instead of holding a copy each."""

    # Far more than the distinct sets a fleet asks for; only bounds a misbehaving one.
    _LIMIT = 65536

    def __init__(self) -> None:
        self._sets: dict[frozenset[str], frozenset[str]] = {}

    def intern(self, names: Sequence[str]) -> frozenset[str]:
        key = frozenset(sys.intern(n) for n in names)
        found = self._sets.get(key)
        if found is not None:
            return found
        if len(self._sets) >= self._LIMIT:
            self._sets.clear()
        self._sets[key] = key
        return key


class _TypeState:
    __slots__ = ("force", "have", "names", "nonce", "open", "rejected", "sent")

    def __init__(self) -> None:
        self.names: frozenset[str] | None = None  # None: wildcard
        self.open = False  # a request is waiting for our answer
        self.nonce = ""  # of our latest response of this type
        self.sent: str | None = None  # version of that response
        self.have = ""  # version the node reports having applied
        self.rejected: str | None = None  # last version the node NACKed
        self.force = False  # answer even if unchanged (EDS after a CDS response)


class SotwStream:
    """Protocol state of one state-of-the-world ADS stream; no I/O."""

    __slots__ = ("_names", "_nonce", "_status", "_types")

    def __init__(self, status: StreamStatus, names: NameSets) -> None:
        self._status = status
        self._names = names
        self._types: dict[str, _TypeState] = {}
        self._nonce = 0

    def on_request(self, request: DiscoveryRequest) -> Received:
        type_url = KNOWN_TYPES.get(request.type_url)
        if type_url is None:
            return Received("unknown_type", request.type_url, request.version_info)
        state = self._types.get(type_url)
        if state is None:
            state = self._types[type_url] = _TypeState()
        nonce = request.response_nonce
        # An empty nonce is a fresh subscription (as on a new stream), never stale.
        if state.nonce and nonce and nonce != state.nonce:
            return Received("stale", type_url, request.version_info)

        names = list(request.resource_names)
        if type_url in WILDCARD_TYPES and (not names or "*" in names):
            state.names = None
        else:
            state.names = self._names.intern(names)
        state.open = True
        # Share the string we sent rather than hold the request's copy of it.
        have = request.version_info
        state.have = state.sent if have == state.sent and state.sent is not None else have
        answers_ours = bool(nonce) and nonce == state.nonce

        if request.HasField("error_detail"):
            rejected = state.sent if answers_ours else None
            if rejected is not None:
                state.rejected = rejected
            message = request.error_detail.message
            self._status.record_nack(type_url, rejected or "", message)
            return Received("nack", type_url, rejected or "", message)
        if answers_ours:
            self._status.record_ack(type_url, state.sent or "")
            return Received("ack", type_url, state.sent or "")
        if request.version_info:
            # A reconnecting node reports what it already has: that is its ACKed state.
            self._status.record_ack(type_url, request.version_info)
        return Received("subscribe", type_url, request.version_info)

    def pending(self, view: Snapshot) -> list[Outgoing]:
        """The responses due now, in push order; the state is updated as if sent."""
        out: list[Outgoing] = []
        for type_url in PUSH_ORDER:
            state = self._types.get(type_url)
            if state is None or (state.names is not None and not state.names):
                continue  # not subscribed (an empty by-name request unsubscribes all)
            body = sotw_body(view[type_url], state.names)
            # What the node will have once it answers: what it said, or what is in flight.
            baseline = state.have if state.open else state.sent
            if body.version == state.rejected:
                continue  # rejected: the node waits for a newer version; do not block
            if body.version == baseline and not state.force:
                continue
            if not state.open:
                break  # keep push order: later types wait for this one's ACK
            self._nonce += 1
            nonce = str(self._nonce)
            state.nonce, state.sent, state.open, state.force = nonce, body.version, False, False
            self._status.record_sent(type_url, body.version)
            out.append(
                Outgoing(type_url, body.version, nonce, body.count, 0, sotw_response(body, nonce))
            )
            if type_url == CLUSTER:
                endpoints = self._types.get(ENDPOINT)
                if endpoints is not None:
                    endpoints.force = True
        return out
