"""``python -m dals.kv serve``: the KV DAL process, on the listeners the agent assigns.

Every listener in ``DGW_LISTENER_<NAME>_PORT`` is served on ``DGW_BIND_ADDRESS``
(127.0.0.1 unless the agent says otherwise): names containing ``grpc`` speak gRPC
(``dgw.kv.v1.KeyValue``, ``grpc.health.v1.Health`` and the platform's migration
contract ``dgw.migration.v1.DalMigration``, ``migration_api.py``), all others HTTP/JSON
(``http_api.py``). The configuration comes from ``KV_CONFIG`` (``config.py``); a bad
one stops the process with the message, before any port is opened. SIGTERM or SIGINT
stops it: listeners first, then the engines.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import signal

import grpc
from aiohttp import web

from . import config as kv_config
from . import grpc_api, http_api, migration_api
from .engines import EngineError
from .faults import Faults
from .service import KvService

log = logging.getLogger("dals.kv")
_PORT_ENV = re.compile(r"^DGW_LISTENER_(?P<name>[A-Z0-9_]+)_PORT$")
STOP_GRACE_S = 1.0


class ServeError(Exception):
    """The DAL cannot start; the message says why."""


def listeners_from_env(env: dict[str, str]) -> dict[str, int]:
    return {m.group("name").lower(): int(v) for k, v in env.items()
            if (m := _PORT_ENV.match(k)) and v.isdigit()}  # fmt: skip


class Listeners:
    """The gRPC servers and HTTP sites of one DAL process."""

    def __init__(self) -> None:
        self.grpc: list[grpc.aio.Server] = []
        self.http: list[web.AppRunner] = []
        self.ports: dict[str, int] = {}

    async def start(self, service: KvService, dal: str, host: str, listeners: dict[str, int]) -> None:
        limit = service.limits.max_request_bytes * 2  # past our own check, gRPC refuses by itself
        for name, port in sorted(listeners.items()):
            if "grpc" in name:
                server = grpc.aio.server(options=[("grpc.max_receive_message_length", limit),
                                                  ("grpc.so_reuseport", 0)])  # fmt: skip
                server.add_generic_rpc_handlers((grpc_api.handler(service), grpc_api.health_handler(),
                                                 migration_api.handler(service)))
                bound = server.add_insecure_port(f"{host}:{port}")
                if bound == 0:
                    raise ServeError(f"listener {name}: cannot bind {host}:{port}")
                await server.start()
                self.grpc.append(server)
            else:
                runner = web.AppRunner(http_api.app(service, dal, name), access_log=None)
                await runner.setup()
                site = web.TCPSite(runner, host, port)
                self.http.append(runner)
                try:
                    await site.start()
                except OSError as e:
                    raise ServeError(f"listener {name}: cannot bind {host}:{port}: {e.strerror}") from None
                bound = port or site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            self.ports[name] = bound
            log.info("event=listening dal=%s listener=%s address=%s:%d", dal, name, host, bound)

    async def stop(self) -> None:
        for server in self.grpc:
            await server.stop(STOP_GRACE_S)
        for runner in self.http:
            await runner.cleanup()


async def serve(env: dict[str, str], stop: asyncio.Event | None = None) -> None:
    dal = env.get("DGW_DAL_NAME", "kv")
    try:
        config = kv_config.from_env(env)
    except kv_config.ConfigError as e:
        raise ServeError(str(e)) from None
    listeners = listeners_from_env(env)
    if not listeners:
        raise ServeError("no listeners: set DGW_LISTENER_<NAME>_PORT for at least one listener")
    try:
        service = await KvService.start(config)
    except EngineError as e:
        raise ServeError(str(e)) from None
    service.faults = Faults.from_env(env)
    running = Listeners()
    purge = asyncio.create_task(service.purge_forever(), name="kv-purge")
    try:
        await running.start(service, dal, env.get("DGW_BIND_ADDRESS", "127.0.0.1"), listeners)
        log.info("event=ready dal=%s namespaces=%s engines=%s cache=%s", dal, ",".join(sorted(config.namespaces)),
                 ",".join(f"{n}:{e.name}" for n, e in sorted(service.engines.items())),
                 config.cache.url if config.cache else "none")  # fmt: skip
        if stop is None:
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    finally:
        purge.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await purge
        await running.stop()
        await service.close()
        log.info("event=stopped dal=%s", dal)
