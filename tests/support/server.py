"""An in-process xds_server for tests, and the admin token its first start made."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from xds_server.server import XdsServer
from xds_server.settings import ServerSettings


@contextlib.asynccontextmanager
async def running_server(settings: ServerSettings) -> AsyncIterator[XdsServer]:
    """A started server, stopped (ports and store released) on the way out."""
    server = XdsServer(settings)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def admin_token(server: XdsServer) -> str:
    """The admin API needs a token: the one the server made on its first start."""
    return server.admin_token_path.read_text().strip()


def admin_headers(server: XdsServer) -> dict[str, str]:
    return {"Authorization": f"Bearer {admin_token(server)}"}
