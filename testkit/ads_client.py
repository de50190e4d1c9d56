"""An Envoy-like xDS client, for conformance tests and the benchmark load generator.

Two levels:

- ``AdsCall``: one raw ADS stream (state of the world or delta) for scripted
  conversations: send exactly the requests a test wants, read responses one by one.
  ``sotw_request`` and ``delta_request`` build requests.
- ``XdsClient``: behaves like Envoy on ADS. It subscribes to clusters and listeners as
  wildcards, then to the endpoints its EDS clusters use and the route configurations
  its listeners' HTTP connection managers name; it ACKs every response (or NACKs those
  a ``reject`` callback refuses, keeping its previous version, as Envoy does), and on
  reconnect reports what it has (``version_info`` / ``initial_resource_versions``).
  ``wait_for`` awaits a condition on its state without polling.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeAlias

import grpc
from envoy.config.cluster.v3.cluster_pb2 import Cluster
from envoy.config.core.v3.base_pb2 import Node
from envoy.config.endpoint.v3.endpoint_pb2 import ClusterLoadAssignment
from envoy.config.listener.v3.listener_pb2 import Listener
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.service.discovery.v3.discovery_pb2 import (
    DeltaDiscoveryRequest,
    DeltaDiscoveryResponse,
    DiscoveryRequest,
    DiscoveryResponse,
)
from google.rpc.status_pb2 import Status

from xds_server.ads.server import DELTA_METHOD, SERVICE, SOTW_METHOD
from xds_server.resources import CLUSTER, ENDPOINT, LISTENER, MESSAGE_TYPES, ROUTE

_INVALID_ARGUMENT = 3  # google.rpc.Code, as Envoy reports a rejected config
_HCM_TYPE_URL = (
    "type.googleapis.com/"
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
)

Response: TypeAlias = "DiscoveryResponse | DeltaDiscoveryResponse"


def make_node(node_id: str, shard: str) -> Node:
    """Envoy's identity: ``node.cluster`` is the shard, ``node.id`` the instance."""
    return Node(id=node_id, cluster=shard)


def sotw_request(
    type_url: str,
    *,
    node: Node | None = None,
    names: Iterable[str] = (),
    version: str = "",
    nonce: str = "",
    error: str | None = None,
) -> DiscoveryRequest:
    request = DiscoveryRequest(
        type_url=type_url, version_info=version, resource_names=list(names), response_nonce=nonce
    )
    if node is not None:
        request.node.CopyFrom(node)
    if error is not None:
        request.error_detail.CopyFrom(Status(code=_INVALID_ARGUMENT, message=error))
    return request


def delta_request(
    type_url: str,
    *,
    node: Node | None = None,
    subscribe: Iterable[str] = (),
    unsubscribe: Iterable[str] = (),
    initial: Mapping[str, str] | None = None,
    nonce: str = "",
    error: str | None = None,
) -> DeltaDiscoveryRequest:
    request = DeltaDiscoveryRequest(
        type_url=type_url,
        resource_names_subscribe=list(subscribe),
        resource_names_unsubscribe=list(unsubscribe),
        initial_resource_versions=dict(initial or {}),
        response_nonce=nonce,
    )
    if node is not None:
        request.node.CopyFrom(node)
    if error is not None:
        request.error_detail.CopyFrom(Status(code=_INVALID_ARGUMENT, message=error))
    return request


class AdsCall:
    """One raw xDS stream on ``channel``: ADS, or the per-type service ``method``
    (e.g. ``/envoy.service.cluster.v3.ClusterDiscoveryService/StreamClusters``).
    Close it with ``close()``."""

    def __init__(
        self, channel: grpc.aio.Channel, *, delta: bool = False, method: str | None = None
    ) -> None:
        self.delta = delta
        request_type = DeltaDiscoveryRequest if delta else DiscoveryRequest
        response_type = DeltaDiscoveryResponse if delta else DiscoveryResponse
        if method is None:
            method = f"/{SERVICE}/{DELTA_METHOD if delta else SOTW_METHOD}"
        # grpc-stubs type only the sync API's call, which takes the request iterator.
        self._call: Any = channel.stream_stream(
            method,
            request_serializer=request_type.SerializeToString,
            response_deserializer=response_type.FromString,
        )()  # type: ignore[call-arg]

    async def send(self, request: DiscoveryRequest | DeltaDiscoveryRequest) -> None:
        await self._call.write(request)

    async def read(self) -> Response | None:
        """The next response, or None when the server ended the stream."""
        response = await self._call.read()
        return None if response is grpc.aio.EOF else response  # type: ignore[attr-defined]

    async def recv(self, timeout: float = 5.0) -> Response:
        """The next response; ``TimeoutError`` if none comes in time, EOFError at the end."""
        response = await asyncio.wait_for(self.read(), timeout)
        if response is None:
            raise EOFError("the server closed the stream")
        return response

    async def status(self) -> tuple[grpc.StatusCode, str]:
        """How the server ended the stream: its gRPC status code and message."""
        return await self._call.code(), await self._call.details()

    async def close(self) -> None:
        self._call.cancel()


Rejector = Callable[[str, Response], str | None]


@dataclass
class TypeState:
    """What the client holds for one type."""

    version: str = ""  # last accepted: version_info, or delta system_version_info
    nonce: str = ""  # of the last response received on the current stream
    resources: dict[str, str] = field(default_factory=dict)  # name -> version ("" in SotW)
    payloads: dict[str, bytes] = field(default_factory=dict)  # name -> Any.value
    names: tuple[str, ...] = ()  # requested by name (EDS, RDS)
    responses: int = 0
    nacks: int = 0
    last_update: float = 0.0  # time.monotonic() of the last accepted response


def resource_name(type_url: str, value: bytes) -> str:
    """A resource's name, read from its own message (SotW responses carry no names)."""
    message = MESSAGE_TYPES[type_url].FromString(value)
    if isinstance(message, ClusterLoadAssignment):
        return str(message.cluster_name)
    return str(message.name)  # type: ignore[attr-defined]


def eds_name(cluster: Cluster) -> str | None:
    """The ClusterLoadAssignment an EDS cluster asks for (None for other clusters)."""
    if cluster.type != Cluster.EDS:
        return None
    return str(cluster.eds_cluster_config.service_name or cluster.name)


def rds_names(listener: Listener) -> list[str]:
    """The route configurations a listener's HTTP connection managers fetch over RDS."""
    chains = list(listener.filter_chains)
    if listener.HasField("default_filter_chain"):
        chains.append(listener.default_filter_chain)
    names: list[str] = []
    for chain in chains:
        for f in chain.filters:
            if f.typed_config.type_url == _HCM_TYPE_URL:
                hcm = hcm_pb2.HttpConnectionManager.FromString(f.typed_config.value)
                if hcm.HasField("rds"):
                    names.append(hcm.rds.route_config_name)
    return names


class XdsClient:
    """An Envoy-like ADS client for node ``node_id`` of ``shard``."""

    def __init__(
        self,
        channel: grpc.aio.Channel,
        node_id: str,
        shard: str,
        *,
        delta: bool = False,
        reject: Rejector | None = None,
        keep_payloads: bool = True,
        on_response: Callable[[XdsClient, str, bool], None] | None = None,
    ) -> None:
        self.channel = channel
        self.node = make_node(node_id, shard)
        self.delta = delta
        self.reject = reject
        self.keep_payloads = keep_payloads
        self.on_response = on_response  # (client, type_url, accepted) after the ACK/NACK
        self.types: dict[str, TypeState] = {t: TypeState() for t in (CLUSTER, ENDPOINT, LISTENER, ROUTE)}
        self.error: BaseException | None = None
        self._call: AdsCall | None = None
        self._task: asyncio.Task[None] | None = None
        self._changed = asyncio.Condition()
        self._eds_of: dict[str, str | None] = {}  # cluster -> its EDS resource name
        self._rds_of: dict[str, list[str]] = {}  # listener -> its RDS names

    # -- lifecycle -----------------------------------------------------------------

    async def start(self) -> None:
        """Open a stream and subscribe, reporting what the client already has."""
        self.error = None
        self._call = AdsCall(self.channel, delta=self.delta)
        for state in self.types.values():
            state.nonce = ""  # nonces belong to a stream
        first = True
        for type_url in (CLUSTER, LISTENER, ENDPOINT, ROUTE):
            state = self.types[type_url]
            wildcard = type_url in (CLUSTER, LISTENER)
            if not wildcard and not state.names:
                continue
            node = self.node if first else None
            first = False
            if self.delta:
                await self._call.send(
                    delta_request(
                        type_url,
                        node=node,
                        subscribe=() if wildcard else state.names,
                        initial=state.resources,
                    )
                )
            else:
                await self._call.send(
                    sotw_request(type_url, node=node, names=state.names, version=state.version)
                )
        self._task = asyncio.create_task(self._receive(self._call))

    async def stop(self) -> None:
        if self._call is not None:
            await self._call.close()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._call = self._task = None

    async def wait_for(self, predicate: Callable[[XdsClient], bool], timeout: float = 5.0) -> None:
        """Return once ``predicate(self)`` holds; raise if the stream ends or time runs out."""

        def ready() -> bool:
            return predicate(self) or self._task is None or self._task.done()

        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(ready), timeout)
        if not predicate(self):
            raise ConnectionError(f"stream ended before the condition held: {self.error!r}")

    def version(self, type_url: str) -> str:
        return self.types[type_url].version

    # -- protocol ------------------------------------------------------------------

    async def _receive(self, call: AdsCall) -> None:
        try:
            while True:
                response = await call.read()
                if response is None:
                    break
                if self.delta:
                    accepted = await self._on_delta(call, response)
                else:
                    accepted = await self._on_sotw(call, response)
                if self.on_response is not None:
                    self.on_response(self, response.type_url, accepted)
                async with self._changed:
                    self._changed.notify_all()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the stream broke: record why, wake the waiters
            self.error = exc
        finally:
            # Waiters re-check and see the stream ended.
            async with self._changed:
                self._changed.notify_all()

    def _received(self, response: DiscoveryResponse | DeltaDiscoveryResponse) -> tuple[TypeState, str | None]:
        """Count a response and decide whether to NACK it (the ``reject`` callback)."""
        state = self.types.setdefault(response.type_url, TypeState())
        state.responses += 1
        state.nonce = response.nonce
        message = self.reject(response.type_url, response) if self.reject is not None else None
        if message is not None:
            state.nacks += 1
        return state, message

    async def _on_sotw(self, call: AdsCall, response: DiscoveryResponse) -> bool:
        type_url = response.type_url
        state, message = self._received(response)
        if message is not None:
            await call.send(
                sotw_request(
                    type_url, names=state.names, version=state.version, nonce=response.nonce,
                    error=message,
                )
            )  # fmt: skip
            return False
        state.version = response.version_info
        state.resources, state.payloads = {}, {}
        eds: dict[str, str | None] = {}
        rds: dict[str, list[str]] = {}
        for any_ in response.resources:
            if type_url == CLUSTER:
                cluster = Cluster.FromString(any_.value)
                name = cluster.name
                eds[name] = eds_name(cluster)
            elif type_url == LISTENER:
                listener = Listener.FromString(any_.value)
                name = listener.name
                rds[name] = rds_names(listener)
            else:
                name = resource_name(type_url, any_.value)
            state.resources[name] = ""
            if self.keep_payloads:
                state.payloads[name] = any_.value
        state.last_update = time.monotonic()
        await call.send(
            sotw_request(type_url, names=state.names, version=state.version, nonce=response.nonce)
        )
        # Like Envoy: (re)created clusters and listeners re-request what they use, even
        # when the names did not change.
        if type_url == CLUSTER:
            self._eds_of = eds
            await self._resubscribe_sotw(call, ENDPOINT, self._wanted(eds))
        elif type_url == LISTENER:
            self._rds_of = rds
            await self._resubscribe_sotw(call, ROUTE, self._wanted(rds))
        return True

    @staticmethod
    def _wanted(used: Mapping[str, str | list[str] | None]) -> tuple[str, ...]:
        names: set[str] = set()
        for value in used.values():
            if isinstance(value, str):
                names.add(value)
            elif value:
                names.update(value)
        return tuple(sorted(names))

    async def _resubscribe_sotw(self, call: AdsCall, type_url: str, names: tuple[str, ...]) -> None:
        state = self.types[type_url]
        if not names and not state.names:
            return
        state.names = names
        await call.send(
            sotw_request(type_url, names=names, version=state.version, nonce=state.nonce)
        )

    async def _on_delta(self, call: AdsCall, response: DeltaDiscoveryResponse) -> bool:
        type_url = response.type_url
        state, message = self._received(response)
        if message is not None:
            await call.send(delta_request(type_url, nonce=response.nonce, error=message))
            return False
        state.version = response.system_version_info
        for resource in response.resources:
            state.resources[resource.name] = resource.version
            if self.keep_payloads:
                state.payloads[resource.name] = resource.resource.value
            if type_url == CLUSTER:
                self._eds_of[resource.name] = eds_name(Cluster.FromString(resource.resource.value))
            elif type_url == LISTENER:
                self._rds_of[resource.name] = rds_names(
                    Listener.FromString(resource.resource.value)
                )
        for name in response.removed_resources:
            state.resources.pop(name, None)
            state.payloads.pop(name, None)
            if type_url == CLUSTER:
                self._eds_of.pop(name, None)
            elif type_url == LISTENER:
                self._rds_of.pop(name, None)
        state.last_update = time.monotonic()
        await call.send(delta_request(type_url, nonce=response.nonce))
        if type_url == CLUSTER:
            await self._resubscribe_delta(call, ENDPOINT, self._wanted(self._eds_of))
        elif type_url == LISTENER:
            await self._resubscribe_delta(call, ROUTE, self._wanted(self._rds_of))
        return True

    async def _resubscribe_delta(self, call: AdsCall, type_url: str, names: tuple[str, ...]) -> None:
        state = self.types[type_url]
        added = sorted(set(names) - set(state.names))
        dropped = sorted(set(state.names) - set(names))
        if not added and not dropped:
            return
        state.names = names
        for name in dropped:
            state.resources.pop(name, None)
            state.payloads.pop(name, None)
        await call.send(delta_request(type_url, subscribe=added, unsubscribe=dropped))
