"""An in-process xds_server (config store, admin API) on loopback ports the kernel
chooses, and an aiohttp client for its admin API."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from tests.support.server import admin_headers, running_server
from xds_server.server import XdsServer
from xds_server.settings import ServerSettings

TWO_DALS = """\
# the kv shard: two DALs on one listener
proxy_config:
  public_listeners:
    api: {mode: http, path: ${DGW_TEST_PORT:-18080}}  # the public port

container_dals:
  thrift: {container_listeners: {api: 18081}}
  cql: {container_listeners: {api: 18082}}

wiring:
  thrift: {mode: shadow, target: cql}
"""


def settings(tmp_path: Path) -> ServerSettings:
    shards = tmp_path / "shards"
    shards.mkdir(exist_ok=True)
    # Plaintext control channel: these tests are about the admin API (tests/security
    # covers mTLS).
    return ServerSettings(config_dir=shards, xds="127.0.0.1:0", admin="127.0.0.1:0",
                          data_dir=tmp_path / "data", insecure=True)


class Api:
    """The admin API of one running server."""

    def __init__(self, server: XdsServer, session: aiohttp.ClientSession):
        self.server = server
        self.session = session
        self.base = f"http://127.0.0.1:{server.admin_port}"

    async def call(self, method: str, path: str, body: dict | None = None,
                   if_match: int | None = None) -> tuple[int, dict, aiohttp.typedefs.LooseHeaders]:
        headers = {} if if_match is None else {"If-Match": f'"{if_match}"'}
        async with self.session.request(method, self.base + path, json=body, headers=headers) as r:
            return r.status, await r.json(), r.headers

    async def put(self, shard: str, text: str, if_match: int | None, **query: str) -> tuple[int, dict]:
        q = "?" + "&".join(f"{k}={v}" for k, v in query.items()) if query else ""
        status, body, _ = await self.call("PUT", f"/v1/shards/{shard}{q}", {"yaml": text, "message": "t"}, if_match)
        return status, body


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[XdsServer]:
    async with running_server(settings(tmp_path)) as running:
        yield running


def admin_session(server: XdsServer) -> aiohttp.ClientSession:
    """A client carrying the admin token the server made on its first start."""
    return aiohttp.ClientSession(headers=admin_headers(server))


@pytest.fixture
async def api(server: XdsServer) -> AsyncIterator[Api]:
    async with admin_session(server) as session:
        yield Api(server, session)
