"""Incremental (delta) ADS: the per-stream protocol state machine.

Per type the stream keeps the subscription (wildcard flag, explicit names) and what
the node has: resource name → version, seeded from ``initial_resource_versions`` on
(re)connect, so a reconnecting node is sent only what differs and ``removed_resources``
for what is gone, never what it already has.

Rules:
- Subscription changes are applied whatever their nonce (the nonce only says which
  response an ACK/NACK is about).
- What is sent counts as what the node has. A NACK is recorded and nothing is re-sent:
  the rejected versions are not offered again, the node waits for newer content (on
  reconnect its ``initial_resource_versions`` tell the truth again).
- The first request of each type on a stream gets one answer even when nothing
  differs (an empty response carrying ``system_version_info``): a new Envoy finishes
  initialising an empty type, a reconnecting one ACKs the version it has.
- A push sends the updates of every type in ``PUSH_ORDER`` first, then the removals,
  each in its own later response, users before what they use (``REMOVAL_ORDER``:
  listeners, routes, clusters, endpoints, secrets), so nothing is removed while a
  resource updated in the same push, or one still to be removed, may point at it.
- After a CDS update the subscribed EDS resources are sent again even if unchanged:
  a modified cluster is re-created in Envoy and warms until it sees its endpoints.
- Wildcard applies to CDS and LDS: an empty first subscription or ``*``.
"""

from __future__ import annotations

import sys

from envoy.service.discovery.v3.discovery_pb2 import DeltaDiscoveryRequest

from xds_server.ads.events import KNOWN_TYPES, Outgoing, Received
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

# Removals go users first: a listener before the route configuration it names, a
# route before the clusters it sends to, a cluster before its endpoints, secrets last.
REMOVAL_ORDER: tuple[str, ...] = (LISTENER, ROUTE, CLUSTER, ENDPOINT, SECRET)

# Responses of one type awaiting an ACK whose versions we remember; Envoy answers in
# order, so more than a handful means it has stopped answering and old ones can go.
_IN_FLIGHT_LIMIT = 16


class _TypeState:
    __slots__ = ("answered", "force", "in_flight", "known", "names", "wildcard")

    def __init__(self, wildcard: bool, known: dict[str, str]) -> None:
        self.wildcard = wildcard
        self.names: set[str] = set()
        self.known = known  # what the node has (or has been sent): name -> version
        self.in_flight: dict[int, str] = {}  # nonce -> system version sent with it
        self.force = False
        self.answered = False

    def in_scope(self, name: str) -> bool:
        return self.wildcard or name in self.names


class DeltaStream:
    """Protocol state of one delta ADS stream; no I/O."""

    __slots__ = ("_nonce", "_status", "_types")

    def __init__(self, status: StreamStatus) -> None:
        self._status = status
        self._types: dict[str, _TypeState] = {}
        self._nonce = 0

    def on_request(self, request: DeltaDiscoveryRequest) -> Received:
        type_url = KNOWN_TYPES.get(request.type_url)
        if type_url is None:
            return Received("unknown_type", request.type_url, "")
        wildcard_type = type_url in WILDCARD_TYPES
        state = self._types.get(type_url)
        first = state is None
        if state is None:
            state = self._types[type_url] = _TypeState(
                wildcard=wildcard_type and not request.resource_names_subscribe,
                known={sys.intern(n): v for n, v in request.initial_resource_versions.items()},
            )
        for name in request.resource_names_subscribe:
            if name == "*":
                state.wildcard = state.wildcard or wildcard_type
            else:
                state.names.add(sys.intern(name))
        for name in request.resource_names_unsubscribe:
            if name == "*":
                state.wildcard = False
            else:
                state.names.discard(name)
        if first or request.resource_names_unsubscribe:
            # The node drops what it unsubscribed from; keep ``known`` to what is in scope.
            state.known = {n: v for n, v in state.known.items() if state.in_scope(n)}

        if not request.response_nonce:
            return Received("subscribe", type_url, "")
        version = self._settle(state, request.response_nonce)
        if request.HasField("error_detail"):
            message = request.error_detail.message
            self._status.record_nack(type_url, version or "", message)
            return Received("nack", type_url, version or "", message)
        if version is None:
            return Received("stale", type_url, "")
        self._status.record_ack(type_url, version)
        return Received("ack", type_url, version)

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
        out: list[Outgoing] = []
        removals: dict[str, tuple[_TypeState, TypeSnapshot, list[str]]] = {}
        for type_url in PUSH_ORDER:
            state = self._types.get(type_url)
            if state is None:
                continue
            snapshot = view[type_url]
            resources = snapshot.resources
            candidates = resources if state.wildcard else [n for n in state.names if n in resources]
            known = state.known
            changed = sorted(
                n for n in candidates if state.force or known.get(n) != resources[n].version
            )
            gone = sorted(n for n in known if n not in resources)
            if changed or not state.answered:
                for name in changed:
                    known[name] = resources[name].version
                out.append(self._send(type_url, state, snapshot, changed, []))
                state.answered = True
                state.force = False
                if type_url == CLUSTER and changed:
                    endpoints = self._types.get(ENDPOINT)
                    if endpoints is not None:
                        endpoints.force = True
            if gone:
                removals[type_url] = (state, snapshot, gone)
        for type_url in REMOVAL_ORDER:
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
        if len(state.in_flight) >= _IN_FLIGHT_LIMIT:
            del state.in_flight[min(state.in_flight)]
        state.in_flight[self._nonce] = snapshot.version
        self._status.record_sent(type_url, snapshot.version)
        nonce = str(self._nonce)
        payload = delta_response(snapshot, names, removed, nonce)
        return Outgoing(type_url, snapshot.version, nonce, len(names), len(removed), payload)
