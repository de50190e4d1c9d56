"""``python -m dals.sample``: run the sample DAL until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import re
import signal
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from aiohttp import web

log = logging.getLogger("dals.sample")
_PORT_ENV = re.compile(r"^DGW_LISTENER_(?P<name>[A-Z0-9_]+)_PORT$")
GRPC_SERVICE = "dgw.sample.v1.Echo"


class Failing(Exception):
    """The DAL is set to fail this call."""


@dataclass
class Faults:
    """What the DAL does to its calls; changed live by ``PUT /faults``."""

    delay_ms: float = 0.0
    concurrency: int = 0
    slow_percent: float = 0.0
    slow_ms: float = 0.0
    fail: bool = False
    fail_file: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Faults:
        return cls(
            delay_ms=float(env.get("SAMPLE_DELAY_MS", "0")),
            concurrency=int(env.get("SAMPLE_CONCURRENCY", "0")),
            slow_percent=float(env.get("SAMPLE_SLOW_PERCENT", "0")),
            slow_ms=float(env.get("SAMPLE_SLOW_MS", "0")),
            fail=env.get("SAMPLE_FAIL", "").lower() in ("1", "true", "yes"),
            fail_file=env.get("SAMPLE_FAIL_FILE") or None,
        )

    def update(self, changes: Mapping[str, Any]) -> None:
        """Apply ``changes`` (names of the fields); a bad one changes nothing."""
        kinds: dict[str, type] = {"delay_ms": float, "concurrency": int, "slow_percent": float,
                                  "slow_ms": float, "fail": bool}  # fmt: skip
        unknown = set(changes) - set(kinds)
        if unknown:
            raise ValueError(f"unknown fault knobs {sorted(unknown)}; known: {sorted(kinds)}")
        checked = {}
        for key, value in changes.items():
            kind = kinds[key]
            if kind is bool:
                if not isinstance(value, bool):
                    raise ValueError(f"{key} must be true or false")
                checked[key] = value
            else:
                if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                    raise ValueError(f"{key} must be a number ≥ 0")
                checked[key] = kind(value)
        for key, value in checked.items():
            setattr(self, key, value)

    def failing(self) -> bool:
        return self.fail or bool(self.fail_file and Path(self.fail_file).exists())


@dataclass
class State:
    name: str
    faults: Faults
    unhealthy_file: str | None
    seed: int | None = None
    requests: int = 0
    failed: int = 0
    by_path: dict[str, int] = field(default_factory=dict)
    by_method: dict[str, int] = field(default_factory=dict)
    in_service: int = 0
    max_in_service: int = 0
    waiting: int = 0
    _turn: asyncio.Condition = field(default_factory=asyncio.Condition)
    _rng: random.Random = field(default_factory=random.Random)

    def __post_init__(self) -> None:
        self._rng.seed(self.seed)

    async def served(self, path: str, method: str) -> None:
        """Count the call, then hold it for its service time within the concurrency
        limit; ``Failing`` (at once) when the DAL is set to fail."""
        self.requests += 1
        self.by_path[path] = self.by_path.get(path, 0) + 1
        self.by_method[method] = self.by_method.get(method, 0) + 1
        slow = self.faults.slow_percent and self._rng.random() * 100 < self.faults.slow_percent
        delay_s = (self.faults.slow_ms if slow else self.faults.delay_ms) / 1000.0
        if self.faults.concurrency:
            async with self._turn:  # FIFO: asyncio.Condition wakes waiters in order
                self.waiting += 1
                try:
                    await self._turn.wait_for(
                        lambda: self.in_service < max(1, self.faults.concurrency)
                    )
                finally:
                    self.waiting -= 1
        try:
            await self._hold(delay_s)
        finally:
            if self.faults.concurrency:
                async with self._turn:
                    self._turn.notify()
        if self.faults.failing():  # like a DAL whose datastore failed: after the service time
            self.failed += 1
            raise Failing

    async def _hold(self, delay_s: float) -> None:
        self.in_service += 1
        self.max_in_service = max(self.max_in_service, self.in_service)
        try:
            if delay_s:
                await asyncio.sleep(delay_s)
        finally:
            self.in_service -= 1

    def healthy(self) -> bool:
        return not (self.unhealthy_file and Path(self.unhealthy_file).exists())

    def stats(self) -> dict[str, Any]:
        return {"dal": self.name, "requests": self.requests, "failed": self.failed, "by_path": self.by_path,
                "by_method": self.by_method, "in_service": self.in_service,
                "max_in_service": self.max_in_service, "waiting": self.waiting}  # fmt: skip


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
        return web.json_response(state.stats())

    async def faults(request: web.Request) -> web.Response:
        try:
            changes = json.loads(await request.read() or b"{}")
            if not isinstance(changes, dict):
                raise ValueError("send a JSON object of knobs")
            state.faults.update(changes)
        except ValueError as e:
            return web.json_response({"error": str(e)}, status=400)
        return web.json_response({k: v for k, v in vars(state.faults).items() if k != "fail_file"})

    async def echo(request: web.Request) -> web.Response:
        body = await request.read()
        try:
            await state.served(request.path, request.method)
        except Failing:
            return web.json_response({"dal": state.name, "error": "set to fail"}, status=503,
                                     headers={"x-dgw-dal": state.name})  # fmt: skip
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
    app.router.add_put("/faults", faults)
    app.router.add_route("*", "/{tail:.*}", echo)
    return app


def grpc_handler(state: State) -> grpc.GenericRpcHandler[bytes, bytes]:
    def answering(method: str) -> Any:
        path = f"/{GRPC_SERVICE}/{method}"

        async def call(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
            try:
                await state.served(path, path)
            except Failing:
                await context.abort(grpc.StatusCode.UNAVAILABLE, f"{state.name} is set to fail")
            # Headers only with the answer: a proxy may hedge or retry a call until they come.
            await context.send_initial_metadata((("x-dgw-dal", state.name),))
            return state.name.encode() + b":" + request

        return call

    async def stats(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        return json.dumps(state.stats()).encode()

    identity = {"request_deserializer": None, "response_serializer": None}
    return grpc.method_handlers_generic_handler(
        GRPC_SERVICE,
        {
            "Echo": grpc.unary_unary_rpc_method_handler(answering("Echo"), **identity),
            "Write": grpc.unary_unary_rpc_method_handler(answering("Write"), **identity),
            "Stats": grpc.unary_unary_rpc_method_handler(stats, **identity),
        },
    )


async def serve(env: dict[str, str]) -> None:
    state = State(
        name=env.get("DGW_DAL_NAME", "sample"),
        faults=Faults.from_env(env),
        unhealthy_file=env.get("SAMPLE_UNHEALTHY_FILE") or None,
        seed=int(env["SAMPLE_SEED"]) if env.get("SAMPLE_SEED", "").isdigit() else None,
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
            await web.TCPSite(runner, host, port, backlog=1024).start()
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
