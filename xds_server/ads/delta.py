"""Incremental (delta) ADS: the per-stream protocol state machine.

Per type the stream keeps the subscription (wildcard flag, explicit names), what the
node has (resource name → version, seeded from ``initial_resource_versions`` on
(re)connect, so a reconnecting node is sent only what differs and ``removed_resources``
for what is gone, never what it already has), and the names it is owed an explicit
word about.

Rules, from Envoy's xds_protocol (section names quoted):
- "Incremental xDS": subscription changes are applied whatever their nonce (the nonce
  only says which response an ACK/NACK is about). A NACK whose nonce is not one of our
  responses in flight is stale: ignored, not recorded against any version.
- What is sent counts as what the node has. A NACK is recorded and nothing is re-sent:
  the rejected versions are not offered again, the node waits for newer content (on
  reconnect its ``initial_resource_versions`` tell the truth again).
- "Subscribing to Resources": a subscribed name is answered even when the node seems
  to have its latest version already (it may have forgotten it).
- "Knowing When a Requested Resource Does Not Exist": a subscribed name that does not
  exist is listed in ``removed_resources``, once, so the client stops waiting for it;
  if it appears later it is sent.
- "Unsubscribing from Resources": unsubscribing a name also covered by the wildcard is
  answered with the resource (still covered) or in ``removed_resources``; other
  unsubscriptions need no answer.
- "How the client specifies what resources to return": wildcard (CDS, LDS) by an empty
  first subscription or ``*``; ``*`` unsubscribed ends it.
- The first request of each type on a stream gets one answer even when nothing
  differs (an empty response carrying ``system_version_info``): a new Envoy finishes
  initialising an empty type, a reconnecting one ACKs the version it has. A type we
  hold no resources of (RTDS, SRDS, VHDS, ...) is served as an empty one.
- "Eventual consistency considerations": a push sends the updates of every type in
  ``PUSH_ORDER`` first, then the removals, each in its own later response, users before
  what they use (``REMOVAL_ORDER``: listeners, routes, clusters, endpoints, secrets),
  so nothing is removed while a resource updated in the same push, or one still to be
  removed, may point at it. Names reported as not existing go with the updates: the
  node never had them, nothing can point at them.
- "Resource warming": after a CDS update the subscribed EDS resources are sent again
  even if unchanged: a modified cluster is re-created in Envoy and warms until it sees
  its endpoints.
- Flow control: at most ``IN_FLIGHT_LIMIT`` responses of a type await an ACK; a node
  that far behind is sent nothing more until it answers, and then the latest state.
  So every ACK and NACK is matched to the version it is about.
"""

from __future__ import annotations

import sys

from envoy.service.discovery.v3.discovery_pb2 import DeltaDiscoveryRequest

from xds_server.ads.events import (
    KNOWN_TYPES,
    Outgoing,
    Received,
    bounded,
    checked_type_url,
    too_many,
)
from xds_server.ads.wire import delta_response
from xds_server.cache.snapshot import WILDCARD_TYPES, Snapshot, TypeSnapshot
from xds_server.cache.status import StreamStatus
from xds_server.resources import (
    CLUSTER,
    ENDPOINT,
    LISTENER,
    PUSH_ORDER,
    ROUTE,
    SECRET,
)
from xds_server.settings import AdsLimits

# Removals go users first: a listener before the route configuration it names, a
# route before the clusters it sends to, a cluster before its endpoints, secrets last.
REMOVAL_ORDER: tuple[str, ...] = (LISTENER, ROUTE, CLUSTER, ENDPOINT, SECRET)

# Responses of one type awaiting an ACK. Envoy answers each in order within
# milliseconds; a push needs at most two per type (updates, removals).
IN_FLIGHT_LIMIT = 16

_NOTHING_OWED: frozenset[str] = frozenset()


class _TypeState:
    __slots__ = (
        "answered", "force", "in_flight", "known", "names", "owed", "snapshot", "wildcard",
    )  # fmt: skip

    def __init__(self, wildcard: bool, known: dict[str, str], snapshot: TypeSnapshot | None):
        self.wildcard = wildcard
        self.names: set[str] = set()
        self.known = known  # what the node has (or has been sent): name -> version
        # Names to send, or to list as removed, next time; shared empty set when none
        # (an empty set per type and stream is a kilobyte per node).
        self.owed: set[str] | frozenset[str] = _NOTHING_OWED
        self.in_flight: dict[int, str] = {}  # nonce -> system version sent with it
        self.force = False
        self.answered = False
        self.snapshot = snapshot  # an unserved type's (empty) resources; None if served

    def in_scope(self, name: str) -> bool:
        return self.wildcard or name in self.names

    def owe(self, name: str) -> None:
        if not isinstance(self.owed, set):
            self.owed = set()
        self.owed.add(name)


class DeltaStream:
    """Protocol state of one delta ADS stream; no I/O."""

    __slots__ = ("_limits", "_nonce", "_status", "_types", "_unserved")

    def __init__(self, status: StreamStatus, limits: AdsLimits) -> None:
        self._status = status
        self._limits = limits
        self._types: dict[str, _TypeState] = {}
        self._unserved: list[str] = []
        self._nonce = 0

    def on_request(self, request: DeltaDiscoveryRequest) -> Received:
        """Apply one request; raises ``Refused`` for one the stream will not serve."""
        type_url = KNOWN_TYPES.get(request.type_url) or checked_type_url(request.type_url)
        subscribe = request.resource_names_subscribe
        unsubscribe = request.resource_names_unsubscribe
        limits = self._limits
        state = self._types.get(type_url)
        first = state is None
        # ``initial_resource_versions`` is read on a type's first request only.
        count = len(subscribe) + len(unsubscribe)
        if first:
            count += len(request.initial_resource_versions)
        if count > limits.max_names_per_request:
            raise too_many(
                "one request", count, limits.max_names_per_request, "max_names_per_request"
            )
        if state is None:
            state = self._add_type(type_url, request)
        served = state.snapshot is None
        wildcard_type = type_url in WILDCARD_TYPES
        for name in subscribe:
            if name == "*":
                state.wildcard = state.wildcard or wildcard_type
                continue
            name = sys.intern(name)
            state.names.add(name)
            if not first or name not in state.known:
                state.owe(name)  # answered even if the node seems to have it
        for name in unsubscribe:
            if name == "*":
                state.wildcard = False
                continue
            state.names.discard(name)
            if state.wildcard:
                state.owe(name)  # tell whether the wildcard still covers it
            elif isinstance(state.owed, set):
                state.owed.discard(name)
        if first or unsubscribe:
            # The node drops what it unsubscribed from; keep ``known`` to what is in scope.
            state.known = {n: v for n, v in state.known.items() if state.in_scope(n)}
        if subscribe:
            held = sum(len(s.names) for s in self._types.values())
            if held > limits.max_names_per_stream:
                raise too_many(
                    "this stream", held, limits.max_names_per_stream, "max_names_per_stream"
                )

        if not request.response_nonce:
            return Received("subscribe", type_url, "", served=served)
        version = self._settle(state, request.response_nonce)
        if version is None:
            return Received("stale", type_url, "", served=served)
        if request.HasField("error_detail"):
            message = bounded(request.error_detail.message, limits.max_error_detail_chars)
            self._status.record_nack(type_url, version, message)
            return Received("nack", type_url, version, message, served)
        self._status.record_ack(type_url, version)
        return Received("ack", type_url, version, served=served)

    def _add_type(self, type_url: str, request: DeltaDiscoveryRequest) -> _TypeState:
        snapshot = None
        if type_url not in KNOWN_TYPES:
            if len(self._unserved) >= self._limits.max_unserved_types:
                raise too_many(
                    "this stream", len(self._unserved) + 1,
                    self._limits.max_unserved_types, "max_unserved_types",
                    "types this server does not serve",
                )  # fmt: skip
            self._unserved.append(type_url)
            snapshot = TypeSnapshot(type_url, {})
        state = self._types[type_url] = _TypeState(
            wildcard=type_url in WILDCARD_TYPES and not request.resource_names_subscribe,
            known={sys.intern(n): v for n, v in request.initial_resource_versions.items()},
            snapshot=snapshot,
        )
        return state

    @staticmethod
    def _settle(state: _TypeState, nonce: str) -> str | None:
        """The version sent with ``nonce``; forget it and every older response."""
        try:
            number = int(nonce)
        except ValueError:
            return None
        version = state.in_flight.get(number)
        if version is not None:
            state.in_flight = {n: v for n, v in state.in_flight.items() if n > number}
        return version

    def pending(self, view: Snapshot) -> list[Outgoing]:
        """The responses due now: updates in push order, then removals."""
        types = self._types
        for held in types.values():
            if len(held.in_flight) >= IN_FLIGHT_LIMIT:
                return []  # the node is far behind: wait for its ACKs, then the latest
        out: list[Outgoing] = []
        removals: dict[str, tuple[_TypeState, TypeSnapshot, list[str]]] = {}
        for type_url in (*PUSH_ORDER, *self._unserved):
            state = types.get(type_url)
            if state is None:
                continue
            snapshot = view[type_url] if state.snapshot is None else state.snapshot
            resources = snapshot.resources
            candidates = resources if state.wildcard else [n for n in state.names if n in resources]
            known = state.known
            changed = sorted(
                n for n in candidates if state.force or known.get(n) != resources[n].version
            )
            absent: list[str] = []
            if state.owed:
                updated = set(changed)
                for name in state.owed:
                    if name in resources and state.in_scope(name):
                        updated.add(name)
                    elif name not in known:  # what the node has and is gone: a removal
                        absent.append(name)
                state.owed = _NOTHING_OWED
                absent.sort()
                changed = sorted(updated)
            gone = sorted(n for n in known if n not in resources)
            # Nothing to send: the node is as current as its subscriptions can be.
            self._status.record_due(type_url, snapshot.version if changed or absent or gone
                                    or not state.answered else None)
            if changed or absent or not state.answered:
                for name in changed:
                    known[name] = resources[name].version
                out.append(self._send(type_url, state, snapshot, changed, absent))
                state.answered = True
                state.force = False
                if type_url == CLUSTER and changed:
                    endpoints = types.get(ENDPOINT)
                    if endpoints is not None:
                        endpoints.force = True
            if gone:
                removals[type_url] = (state, snapshot, gone)
        for type_url in (*REMOVAL_ORDER, *self._unserved):
            if type_url not in removals:
                continue
            state, snapshot, gone = removals[type_url]
            for name in gone:
                del state.known[name]
            out.append(self._send(snapshot.type_url, state, snapshot, [], gone))
        return out

    def _send(
        self,
        type_url: str,
        state: _TypeState,
        snapshot: TypeSnapshot,
        names: list[str],
        removed: list[str],
    ) -> Outgoing:
        self._nonce += 1
        state.in_flight[self._nonce] = snapshot.version
        self._status.record_sent(type_url, snapshot.version)
        nonce = str(self._nonce)
        payload = delta_response(snapshot, names, removed, nonce)
        return Outgoing(type_url, snapshot.version, nonce, len(names), len(removed), payload)
