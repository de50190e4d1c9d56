"""``python -m dals.sample``: run the sample DAL until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import signal
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from aiohttp import web

log = logging.getLogger("dals.sample")
_PORT_ENV = re.compile(r"^DGW_LISTENER_(?P<name>[A-Z0-9_]+)_PORT$")


@dataclass
class State:
    name: str
    delay_s: float
    unhealthy_file: str | None
    requests: int = 0
    by_path: dict[str, int] = field(default_factory=dict)

    async def served(self, path: str) -> None:
        self.requests += 1
        self.by_path[path] = self.by_path.get(path, 0) + 1
        if self.delay_s:
            await asyncio.sleep(self.delay_s)

    def healthy(self) -> bool:
        return not (self.unhealthy_file and Path(self.unhealthy_file).exists())


def listeners_from_env(env: dict[str, str]) -> dict[str, int]:
    out = {}
    for key, value in env.items():
        m = _PORT_ENV.match(key)
        if m and value.isdigit():
            out[m.group("name").lower()] = int(value)
    return out


def http_app(state: State, listener: str) -> web.Application:
    async def health(_: web.Request) -> web.Response:
        if state.healthy():
            return web.json_response({"dal": state.name, "status": "ok"})
        return web.json_response({"dal": state.name, "status": "unhealthy"}, status=503)

    async def stats(_: web.Request) -> web.Response:
        return web.json_response(
            {"dal": state.name, "requests": state.requests, "by_path": state.by_path}
        )

    async def echo(request: web.Request) -> web.Response:
        body = await request.read()
        await state.served(request.path)
        return web.json_response(
            {
                "dal": state.name,
                "listener": listener,
                "method": request.method,
                "path": request.path,
                "body": body.decode("utf-8", "replace"),
            },
            headers={"x-dgw-dal": state.name},
        )

    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_get("/stats", stats)
    app.router.add_route("*", "/{tail:.*}", echo)
    return app


def grpc_handler(state: State) -> grpc.GenericRpcHandler[bytes, bytes]:
    async def echo(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        await state.served("/dgw.sample.v1.Echo/Echo")
        await context.send_initial_metadata((("x-dgw-dal", state.name),))
        return state.name.encode() + b":" + request

    async def stats(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        return json.dumps({"dal": state.name, "requests": state.requests}).encode()

    identity = {"request_deserializer": None, "response_serializer": None}
    return grpc.method_handlers_generic_handler(
        "dgw.sample.v1.Echo",
        {
            "Echo": grpc.unary_unary_rpc_method_handler(echo, **identity),
            "Stats": grpc.unary_unary_rpc_method_handler(stats, **identity),
        },
    )


async def serve(env: dict[str, str]) -> None:
    state = State(
        name=env.get("DGW_DAL_NAME", "sample"),
        delay_s=float(env.get("SAMPLE_DELAY_MS", "0")) / 1000.0,
        unhealthy_file=env.get("SAMPLE_UNHEALTHY_FILE") or None,
    )
    host = env.get("DGW_BIND_ADDRESS", "127.0.0.1")
    listeners = listeners_from_env(env)
    if not listeners:
        raise SystemExit("no listeners: set DGW_LISTENER_<NAME>_PORT for at least one listener")
    runners: list[web.AppRunner] = []
    servers: list[grpc.aio.Server] = []
    for name, port in sorted(listeners.items()):
        if "grpc" in name:
            server = grpc.aio.server()
            server.add_generic_rpc_handlers((grpc_handler(state),))
            if server.add_insecure_port(f"{host}:{port}") == 0:
                raise SystemExit(f"listener {name}: cannot bind {host}:{port}")
            await server.start()
            servers.append(server)
        else:
            runner = web.AppRunner(http_app(state, name), access_log=None)
            await runner.setup()
            await web.TCPSite(runner, host, port).start()
            runners.append(runner)
        log.info("event=listening dal=%s listener=%s address=%s:%d", state.name, name, host, port)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    for server in servers:
        await server.stop(0.5)
    for runner in runners:
        await runner.cleanup()


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    asyncio.run(serve(dict(os.environ)))


if __name__ == "__main__":
    main()
