"""The admin API's listener: aiohttp behind a bounded number of connections.

aiohttp bounds neither how many connections a listener holds nor, by itself, how
long a connection may trickle a request in. Here: at most ``admin_connections`` are
open, so 20,000 idle sockets cannot exhaust the server's file descriptors and starve
gRPC; aiohttp's keep-alive timer, which runs from the moment a connection opens or a
response is sent and closes a connection that has no complete request, is
``admin_idle_timeout_s`` (so slowloris headers never linger); a request body must
arrive within ``admin_body_timeout_s`` (``read_json``).

When the connections are all taken, a new one does not simply bounce: the oldest
connection that has not made an authenticated request is closed to make room
(``Trusted``: the auth middleware marks a connection once a token was accepted on it).
Hundreds of idle anonymous sockets, reconnected as fast as they are closed, then
cost each caller only their own place: a new connection sends its request at once and
is served, and a connection that authenticated is never closed for room. A new
connection is refused only when every open one has authenticated.

The same API is also served on ``<data dir>/admin.sock`` (``LimitedUnixSite``), the
path on which ``dgw`` sends a token it found on disk: see ``dgw/client.py``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time
import weakref
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


class Trusted:
    """The open connections that have made an authenticated request (weakly held: a
    closed connection leaves by itself)."""

    def __init__(self) -> None:
        self._transports: weakref.WeakSet[asyncio.BaseTransport] = weakref.WeakSet()

    def trust(self, transport: asyncio.BaseTransport | None) -> None:
        if transport is not None:
            self._transports.add(transport)

    def __contains__(self, transport: object) -> bool:
        return transport in self._transports


TRUSTED = web.AppKey("trusted_connections", Trusted)


class LimitedSite(web.BaseSite):
    """A TCP site that holds at most ``limit`` connections and never shares its port
    (no SO_REUSEPORT: a second server on the same port fails to start)."""

    def __init__(self, runner: web.BaseRunner, host: str, port: int, limit: int, trusted: Trusted | None = None) -> None:
        super().__init__(runner)
        self._host, self._port, self._limit = host, port, limit
        self._trusted = trusted if trusted is not None else Trusted()
        self.evicted = 0
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
            if len(server.connections) >= self._limit and not self._make_room(server.connections):
                self._note_refusal()
                return _Refused()
            return server()

        self._server = await asyncio.get_running_loop().create_server(protocol, sock=self._bind())

    def _make_room(self, connections: list[Any]) -> bool:
        """Close the oldest open connection that never authenticated; False if none."""
        for handler in connections:  # in the order they were accepted
            transport = handler.transport
            if transport is None or transport.is_closing() or transport in self._trusted:
                continue
            transport.close()
            self.evicted += 1
            return True
        return False

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

    def __init__(self, runner: web.BaseRunner, path: Path, limit: int, trusted: Trusted | None = None) -> None:
        super().__init__(runner, "localhost", 0, limit, trusted)
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
    """The request's JSON body, within the body timeout (aiohttp bounds its size) and
    ``admin_json_depth``; ValueError if it is not JSON or nested too deep."""
    async with asyncio.timeout(limits.admin_body_timeout_s):
        raw = await request.read()
    return parse_json(raw, limits.admin_json_depth)


def parse_json(raw: bytes, depth: int) -> Any:
    """JSON text → value, refusing (ValueError) what is nested deeper than ``depth``:
    Python's parser recurses, so a deep enough body would end in a RecursionError."""
    try:
        value = json.loads(raw)
    except RecursionError:
        raise ValueError(f"the body is nested deeper than {depth} levels") from None
    level: list[Any] = [value]
    for _ in range(depth + 1):
        level = [c for v in level for c in (v.values() if isinstance(v, dict) else v if isinstance(v, list) else ())]
        if not level:
            return value
    raise ValueError(f"the body is nested deeper than {depth} levels")
