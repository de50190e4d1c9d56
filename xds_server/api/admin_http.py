"""The admin API's listener: aiohttp behind a bounded number of connections.

aiohttp bounds neither how many connections a listener holds nor, by itself, how
long a connection may trickle a request in. Here: at most ``admin_connections`` are
open (one more is closed as soon as it is accepted, so 20,000 idle sockets cannot
exhaust the server's file descriptors and starve gRPC); aiohttp's keep-alive timer,
which runs from the moment a connection opens or a response is sent and closes a
connection that has no complete request, is ``admin_idle_timeout_s`` (so slowloris
headers never linger); a request body must arrive within ``admin_body_timeout_s``
(``read_body``).

The same API is also served on ``<data dir>/admin.sock`` (``LimitedUnixSite``), the
path on which ``dgw`` sends a token it found on disk: see ``dgw/client.py``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any

from aiohttp import web

from xds_server.settings import ADMIN_SOCKET_FILE, Limits

log = logging.getLogger("xds_server.api.admin_http")

_REFUSAL_LOG_INTERVAL_S = 10.0
_UNIX_PATH_MAX = 108  # sun_path, with its terminating NUL


class _Refused(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.close()


class LimitedSite(web.BaseSite):
    """A TCP site that holds at most ``limit`` connections and never shares its port
    (no SO_REUSEPORT: a second server on the same port fails to start)."""

    def __init__(self, runner: web.BaseRunner, host: str, port: int, limit: int) -> None:
        super().__init__(runner)
        self._host, self._port, self._limit = host, port, limit
        self._refused = 0
        self._last_refusal_log = 0.0
        self._bound_port = port

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self.port}"

    @property
    def port(self) -> int:
        """The bound port (the one the kernel chose when asked for 0)."""
        return self._bound_port

    def _bind(self) -> socket.socket:
        sock = socket.socket(socket.AF_INET6 if ":" in self._host else socket.AF_INET)
        try:
            # SO_REUSEADDR only lets us bind over TIME_WAIT leftovers; a port that
            # another process listens on still fails with EADDRINUSE.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self._host, self._port))
            sock.listen(128)
            self._bound_port = int(sock.getsockname()[1])
        except OSError:
            sock.close()
            raise
        return sock

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None

        def protocol() -> asyncio.Protocol:
            if len(server.connections) >= self._limit:
                self._note_refusal()
                return _Refused()
            return server()

        self._server = await asyncio.get_running_loop().create_server(protocol, sock=self._bind())

    def _note_refusal(self) -> None:
        self._refused += 1
        now = time.monotonic()
        if now - self._last_refusal_log >= _REFUSAL_LOG_INTERVAL_S:
            log.warning("event=admin_connections_full limit=%d refused=%d", self._limit, self._refused)
            self._last_refusal_log = now
            self._refused = 0


class LimitedUnixSite(LimitedSite):
    """The same API on a Unix socket, 0600 in the server's owner-only data directory:
    only the server's own user reaches it, and a client asks the kernel who answers
    (``SO_PEERCRED``) before it sends a token (``dgw/client.py``). Its connections
    share the limit with no one on the TCP port."""

    def __init__(self, runner: web.BaseRunner, path: Path, limit: int) -> None:
        super().__init__(runner, "localhost", 0, limit)
        self._path = path

    @property
    def name(self) -> str:
        return f"http+unix://{self._path}"

    def _bind(self) -> socket.socket:
        self._path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if self._path.is_socket():
            if _answers(self._path):
                raise OSError(f"another server answers on {self._path} (a second server on this data dir?)")
            self._path.unlink()  # a dead server's
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            old = os.umask(0o177)  # created 0600, never briefly wider
            try:
                sock.bind(str(self._path))
            finally:
                os.umask(old)
            sock.listen(128)
        except OSError:
            sock.close()
            raise
        return sock

    async def stop(self) -> None:
        await super().stop()
        self._path.unlink(missing_ok=True)


def _answers(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True


def admin_socket_path(data_dir: Path) -> Path | None:
    """Where the admin socket goes, or None when the path is too long for a Unix
    socket (108 bytes with its terminating NUL)."""
    path = data_dir / ADMIN_SOCKET_FILE
    return path if len(os.fsencode(path)) < _UNIX_PATH_MAX else None


def runner(app: web.Application, limits: Limits) -> web.AppRunner:
    return web.AppRunner(app, access_log=None, keepalive_timeout=limits.admin_idle_timeout_s)


async def read_json(request: web.Request, limits: Limits) -> Any:
    """The request's JSON body, within the body timeout (aiohttp bounds its size)."""
    async with asyncio.timeout(limits.admin_body_timeout_s):
        return await request.json()
