"""State-of-the-world ADS: the per-stream protocol state machine.

Lock-step per type: a type is answered only while the node has a request for it
outstanding (its first request, or its ACK/NACK of our latest response), so a node
never has two responses of one type in flight and a burst of edits coalesces into one
response of the latest state. Per type the stream keeps only versions, a nonce and
the requested names (shared between streams); resources stay in the snapshot.

Rules, from Envoy's xds_protocol (section names quoted):
- "Resource updates": a request whose ``response_nonce`` is not the latest nonce sent
  for its type is stale (the node has not seen our latest response yet) and is ignored.
- "When to send an update": a request whose ``version_info`` equals what we would send
  gets no response until something changes; versions are content hashes, so this
  holds across control plane restarts.
- "ACK/NACK and resource type instance version": a NACK (``error_detail`` set) is
  recorded and the rejected version is never sent again on this stream; the node
  keeps its last ACKed version and waits for a newer one.
- "How the client specifies what resources to return": an empty ``resource_names``
  means wildcard (CDS, LDS) only while the node has never named a resource of the type
  on this stream; once it has (``*`` included), an empty list unsubscribes from
  everything and gets no response. Newly requested names are answered even when the
  version did not change.
- "Eventual consistency considerations": types are answered in ``PUSH_ORDER``; if an
  earlier type has a change it cannot send yet (its previous response is still
  unacknowledged), later types wait for it, so a node never gets a listener before the
  cluster it points at.
- "Resource warming": after a CDS response the next EDS answer is sent even if EDS did
  not change: Envoy re-requests EDS for a modified cluster with the same names and
  version and keeps the cluster warming until it gets an answer.
- "Deleting Resources": removed clusters and listeners simply disappear from the next
  full CDS/LDS response.
- A type we hold no resources of (RTDS, SRDS, ...) is served as an empty one, so the
  node finishes initialising instead of waiting for an answer that never comes.
"""

from __future__ import annotations

import sys
import weakref
from collections.abc import Iterable

from envoy.service.discovery.v3.discovery_pb2 import DiscoveryRequest

from xds_server.ads.events import (
    KNOWN_TYPES,
    Outgoing,
    Received,
    bounded,
    checked_type_url,
    too_many,
)
from xds_server.ads.wire import sotw_body, sotw_response
from xds_server.cache.snapshot import WILDCARD_TYPES, Snapshot, TypeSnapshot
from xds_server.cache.status import StreamStatus
from xds_server.resources import CLUSTER, ENDPOINT, PUSH_ORDER
from xds_server.settings import AdsLimits


class NameSets:
    """Interns requested name sets, so the nodes of a shard (which ask for the same
    clusters' endpoints) share one frozenset instead of holding a copy each. Held
    weakly: a set is forgotten with the last stream that asked for it."""

    def __init__(self) -> None:
        self._sets: weakref.WeakKeyDictionary[frozenset[str], weakref.ref[frozenset[str]]] = (
            weakref.WeakKeyDictionary()
        )

    def intern(self, names: Iterable[str]) -> frozenset[str]:
        key = frozenset(sys.intern(n) for n in names)
        found = self._sets.get(key)
        shared = found() if found is not None else None
        if shared is not None:
            return shared
        self._sets[key] = weakref.ref(key)
        return key

    def __len__(self) -> int:
        return len(self._sets)


class _TypeState:
    __slots__ = (
        "explicit", "force", "have", "names", "nonce", "open", "rejected", "sent", "snapshot",
    )  # fmt: skip

    def __init__(self, snapshot: TypeSnapshot | None) -> None:
        self.names: frozenset[str] | None = None  # None: wildcard
        self.explicit = False  # the node has named resources (or "*") on this stream
        self.open = False  # a request is waiting for our answer
        self.nonce = ""  # of our latest response of this type
        self.sent: str | None = None  # version of that response
        self.have = ""  # version the node reports having applied
        self.rejected: str | None = None  # last version the node NACKed
        self.force = False  # answer even if unchanged (EDS after CDS, new names)
        self.snapshot = snapshot  # an unserved type's (empty) resources; None if served


def _gains(old: frozenset[str] | None, new: frozenset[str] | None) -> bool:
    """Whether ``new`` asks for something ``old`` did not (wildcard covers every name)."""
    if old is None:
        return False
    return new is None or not new <= old


class SotwStream:
    """Protocol state of one state-of-the-world ADS stream; no I/O."""

    __slots__ = ("_limits", "_names", "_nonce", "_status", "_types", "_unserved")

    def __init__(self, status: StreamStatus, names: NameSets, limits: AdsLimits) -> None:
        self._status = status
        self._names = names
        self._limits = limits
        self._types: dict[str, _TypeState] = {}
        self._unserved: list[str] = []
        self._nonce = 0

    def on_request(self, request: DiscoveryRequest) -> Received:
        """Apply one request; raises ``Refused`` for one the stream will not serve."""
        type_url = KNOWN_TYPES.get(request.type_url) or checked_type_url(request.type_url)
        limits = self._limits
        if len(request.resource_names) > limits.max_names_per_request:
            raise too_many(
                "one request", len(request.resource_names), limits.max_names_per_request,
                "max_names_per_request",
            )  # fmt: skip
        state = self._types.get(type_url) or self._add_type(type_url)
        served = state.snapshot is None
        nonce = request.response_nonce
        # An empty nonce is a fresh subscription (as on a new stream), never stale.
        if state.nonce and nonce and nonce != state.nonce:
            return Received("stale", type_url, request.version_info, served=served)

        self._subscribe(type_url, state, request.resource_names)
        state.open = True
        # Share the string we sent rather than hold the request's copy of it.
        have = request.version_info
        state.have = state.sent if have == state.sent and state.sent is not None else have
        answers_ours = bool(nonce) and nonce == state.nonce

        if request.HasField("error_detail"):
            rejected = state.sent if answers_ours else None
            if rejected is not None:
                state.rejected = rejected
            message = bounded(request.error_detail.message, limits.max_error_detail_chars)
            self._status.record_nack(type_url, rejected or "", message)
            return Received("nack", type_url, rejected or "", message, served)
        if answers_ours:
            self._status.record_ack(type_url, state.sent or "")
            return Received("ack", type_url, state.sent or "", served=served)
        if request.version_info:
            # A reconnecting node reports what it already has: that is its ACKed state.
            self._status.record_ack(type_url, request.version_info)
        return Received("subscribe", type_url, request.version_info, served=served)

    def _add_type(self, type_url: str) -> _TypeState:
        if type_url in KNOWN_TYPES:
            state = _TypeState(None)
        else:
            if len(self._unserved) >= self._limits.max_unserved_types:
                raise too_many(
                    "this stream", len(self._unserved) + 1,
                    self._limits.max_unserved_types, "max_unserved_types",
                    "types this server does not serve",
                )  # fmt: skip
            self._unserved.append(type_url)
            state = _TypeState(TypeSnapshot(type_url, {}))
        self._types[type_url] = state
        return state

    def _subscribe(self, type_url: str, state: _TypeState, names: Iterable[str]) -> None:
        requested = list(names)
        first = not state.open and state.nonce == ""
        state.explicit = state.explicit or bool(requested)
        if type_url in WILDCARD_TYPES and ("*" in requested or not state.explicit):
            new: frozenset[str] | None = None
        else:
            new = self._names.intern(requested)
        if new is state.names:
            return  # the same (interned) set: nothing to check
        if not first and _gains(state.names, new):
            state.force = True  # "must resend any newly requested resources"
        state.names = new
        held = sum(len(s.names) for s in self._types.values() if s.names is not None)
        if held > self._limits.max_names_per_stream:
            raise too_many(
                "this stream", held, self._limits.max_names_per_stream, "max_names_per_stream"
            )

    def pending(self, view: Snapshot) -> list[Outgoing]:
        """The responses due now, in push order; the state is updated as if sent."""
        out: list[Outgoing] = []
        for type_url in (*PUSH_ORDER, *self._unserved):
            state = self._types.get(type_url)
            if state is None or (state.names is not None and not state.names):
                continue  # not subscribed (an empty by-name request unsubscribes all)
            snapshot = view[type_url] if state.snapshot is None else state.snapshot
            body = sotw_body(snapshot, state.names)
            self._status.record_due(type_url, body.version)
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
