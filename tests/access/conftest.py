"""An in-process xds_server (loopback, kernel-chosen ports) with its data dir, and
HTTP helpers that send a token."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.support.server import running_server
from xds_server.server import XdsServer
from xds_server.settings import ServerSettings

SHARD = """
proxy_config:
  public_listeners:
    api: {mode: http, path: 18080}
container_dals:
  kv: {container_listeners: {api: 18081}}
"""


def settings(tmp_path: Path, **extra: Any) -> ServerSettings:
    shards = tmp_path / "shards"
    shards.mkdir(exist_ok=True)
    # Plaintext control channel: these tests are about access to the admin API and
    # fleet status (tests/security covers mTLS).
    return ServerSettings(config_dir=shards, xds="127.0.0.1:0", admin="127.0.0.1:0",
                          data_dir=tmp_path / "data", **{"insecure": True, **extra})


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[XdsServer]:
    s = settings(tmp_path)
    (s.config_dir / "kv.yaml").write_text(SHARD)
    async with running_server(s) as running:
        yield running


class Api:
    """Requests to a server's admin API with a given token (None: none)."""

    def __init__(self, server: XdsServer, http: aiohttp.ClientSession):
        self.base = f"http://127.0.0.1:{server.admin_port}"
        self.http = http

    async def call(
        self, method: str, path: str, token: str | None, headers: dict[str, str] | None = None, **kwargs: Any
    ) -> tuple[int, Any]:
        headers = {**(headers or {}), **({"Authorization": f"Bearer {token}"} if token else {})}
        async with self.http.request(method, self.base + path, headers=headers, **kwargs) as r:
            body = await r.json() if r.content_type == "application/json" else await r.text()
            return r.status, body

    async def token(self, admin: str, role: str, name: str, **extra: Any) -> str:
        status, body = await self.call("POST", "/v1/tokens", admin, json={"role": role, "name": name, **extra})
        assert status == 200, body
        return str(body["token"])


@pytest.fixture
async def api(server: XdsServer) -> AsyncIterator[Api]:
    async with aiohttp.ClientSession() as http:
        yield Api(server, http)
