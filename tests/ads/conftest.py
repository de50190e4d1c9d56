"""A real in-process grpc.aio ADS server on 127.0.0.1:0 and a channel to it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import grpc
import pytest

from xds_server.ads import SERVER_OPTIONS, AdsServer
from xds_server.cache import SnapshotCache


@dataclass
class Ads:
    cache: SnapshotCache
    server: grpc.aio.Server
    address: str
    channel: grpc.aio.Channel


async def start_ads(cache: SnapshotCache) -> tuple[grpc.aio.Server, str]:
    server = grpc.aio.server(options=SERVER_OPTIONS)
    AdsServer(cache).register(server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"


@pytest.fixture
async def ads() -> AsyncIterator[Ads]:
    cache = SnapshotCache()
    server, address = await start_ads(cache)
    channel = grpc.aio.insecure_channel(address)
    try:
        yield Ads(cache, server, address, channel)
    finally:
        await channel.close()
        await server.stop(None)


@pytest.fixture
def start_server() -> Callable[[SnapshotCache], Awaitable[tuple[grpc.aio.Server, str]]]:
    return start_ads
