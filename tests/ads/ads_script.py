"""Scripted ADS conversations: one stream, requests sent by hand, nonces tracked."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import grpc
from envoy.service.discovery.v3.discovery_pb2 import DeltaDiscoveryResponse, DiscoveryResponse

from testkit.ads_client import AdsCall, delta_request, make_node, sotw_request
from xds_server.resources import ENDPOINT, MESSAGE_TYPES, SECRET


def names_of(response: DiscoveryResponse) -> list[str]:
    """The names of the resources in a state-of-the-world response, in order."""
    out = []
    for any_ in response.resources:
        message = MESSAGE_TYPES[response.type_url].FromString(any_.value)
        out.append(message.cluster_name if response.type_url == ENDPOINT else message.name)
    return out


class Sotw:
    """A state-of-the-world stream; remembers the latest nonce and ACKed version per type."""

    def __init__(
        self,
        channel: grpc.aio.Channel,
        node_id: str = "n1",
        shard: str = "s1",
        method: str | None = None,
    ) -> None:
        self.call = AdsCall(channel, method=method)
        self.node = make_node(node_id, shard)
        self.nonce: dict[str, str] = {}
        self.version: dict[str, str] = {}
        self._sent_node = False
        self._probes = 0

    async def request(
        self,
        type_url: str,
        names: Iterable[str] = (),
        *,
        version: str | None = None,
        nonce: str | None = None,
        error: str | None = None,
    ) -> None:
        node = None if self._sent_node else self.node
        self._sent_node = True
        await self.call.send(
            sotw_request(
                type_url,
                node=node,
                names=names,
                version=self.version.get(type_url, "") if version is None else version,
                nonce=self.nonce.get(type_url, "") if nonce is None else nonce,
                error=error,
            )
        )

    async def recv(self, type_url: str | None = None) -> DiscoveryResponse:
        response = await self.call.recv()
        assert isinstance(response, DiscoveryResponse)
        self.nonce[response.type_url] = response.nonce
        if type_url is not None:
            assert response.type_url == type_url, (
                f"expected {type_url}, got {response.type_url} v{response.version_info} "
                f"{names_of(response)}"
            )
        return response

    async def ack(self, response: DiscoveryResponse, names: Iterable[str] = ()) -> None:
        self.version[response.type_url] = response.version_info
        await self.request(response.type_url, names, nonce=response.nonce)

    async def recv_ack(self, type_url: str, names: Iterable[str] = ()) -> DiscoveryResponse:
        response = await self.recv(type_url)
        await self.ack(response, names)
        return response

    async def probe(self) -> None:
        """Prove nothing else is due: a fresh SDS subscription must be answered next.

        Every response is written in push order by the stream that would also answer
        the probe, so anything wrongly due earlier would arrive before the probe's.
        """
        self._probes += 1
        name = f"probe-{self._probes}"
        await self.request(SECRET, [name], version="")
        response = await self.recv()
        assert response.type_url == SECRET and not response.resources, (
            f"expected the probe's empty SDS answer, got {response.type_url} "
            f"v{response.version_info} {names_of(response)}"
        )
        await self.ack(response, [name])

    async def close(self) -> None:
        await self.call.close()


class Delta:
    """A delta stream; remembers the latest nonce per type."""

    def __init__(
        self,
        channel: grpc.aio.Channel,
        node_id: str = "n1",
        shard: str = "s1",
        method: str | None = None,
    ) -> None:
        self.call = AdsCall(channel, delta=True, method=method)
        self.node = make_node(node_id, shard)
        self.nonce: dict[str, str] = {}
        self._sent_node = False

    async def request(
        self,
        type_url: str,
        subscribe: Iterable[str] = (),
        unsubscribe: Iterable[str] = (),
        *,
        initial: Mapping[str, str] | None = None,
        nonce: str = "",
        error: str | None = None,
    ) -> None:
        node = None if self._sent_node else self.node
        self._sent_node = True
        await self.call.send(
            delta_request(
                type_url,
                node=node,
                subscribe=subscribe,
                unsubscribe=unsubscribe,
                initial=initial,
                nonce=nonce,
                error=error,
            )
        )

    async def recv(self, type_url: str | None = None) -> DeltaDiscoveryResponse:
        response = await self.call.recv()
        assert isinstance(response, DeltaDiscoveryResponse)
        self.nonce[response.type_url] = response.nonce
        if type_url is not None:
            assert response.type_url == type_url, (
                f"expected {type_url}, got {response.type_url} "
                f"{[r.name for r in response.resources]} removed={list(response.removed_resources)}"
            )
        return response

    async def ack(self, response: DeltaDiscoveryResponse) -> None:
        await self.request(response.type_url, nonce=response.nonce)

    async def recv_ack(self, type_url: str) -> DeltaDiscoveryResponse:
        response = await self.recv(type_url)
        await self.ack(response)
        return response

    async def probe(self, secret: str = "s1") -> None:
        """Prove nothing else is due: subscribing to an existing secret the node does not
        have must be answered next (then it is unsubscribed, ready for the next probe)."""
        await self.request(SECRET, [secret])
        response = await self.recv()
        assert response.type_url == SECRET and delta_names(response) == [secret], (
            f"expected the probe's SDS answer, got {response.type_url} "
            f"{delta_names(response)} removed={list(response.removed_resources)}"
        )
        await self.ack(response)
        await self.request(SECRET, unsubscribe=[secret])

    async def close(self) -> None:
        await self.call.close()


def delta_names(response: DeltaDiscoveryResponse) -> list[str]:
    return [r.name for r in response.resources]
