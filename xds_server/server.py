"""The xds_server process: config dir → registry (translate) → cache → ADS.

One asyncio loop carries the gRPC server (ADS for Envoys, ``dgw.v1.Gateway`` for
sidecars), the admin HTTP API and the config dir watcher.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import resource
import signal

import grpc
from aiohttp import web

from common.hostport import split_host_port
from xds_server.ads import SERVER_OPTIONS, AdsServer
from xds_server.api import admin, gateway
from xds_server.cache import SnapshotCache
from xds_server.settings import ServerSettings
from xds_server.shards import ShardRegistry
from xds_server.sources.config_dir import ConfigDir
from xds_server.translate import TranslateOptions

log = logging.getLogger("xds_server.server")

# Each Envoy holds one long-lived stream; keepalives find peers that vanished without
# closing, so their per-node state is freed.
KEEPALIVE_OPTIONS = (
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
)


# Python's cyclic collector, tuned for a heap of long-lived per-shard and per-stream
# objects. A collection runs when tracked objects *outnumber* those freed by so many;
# an edit to a shard of 5,000 nodes briefly holds some 40,000 more (each push's
# futures and gRPC operations), so with the default of 700 every edit set off dozens
# of young collections and, every edit or two, a full one (0.3-0.5 s with the loop
# stopped: about half of the edit's CPU). At 200,000 an edit sets off none, while a
# fleet connecting still does; each older generation is collected after 10 of the
# younger. What startup loaded is frozen out of every collection. Garbage without
# cycles is freed at once by reference counting, whatever these say.
GC_THRESHOLDS = (200_000, 10, 10)


def settle_heap() -> None:
    """Once the startup load is done: collect, freeze the survivors, collect less often."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def raise_open_files_limit() -> int:
    """Every node holds a connection: lift the soft open-files limit to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        log.info("event=open_files_limit from=%d to=%d", soft, hard)
    return hard


class XdsServer:
    """The running server; ``start()`` binds, ``stop()`` releases everything."""

    def __init__(self, settings: ServerSettings):
        self.settings = settings
        self.cache = SnapshotCache()
        self.registry = ShardRegistry(
            self.cache, TranslateOptions(public_address=settings.public_address)
        )
        self.config_dir = ConfigDir(settings.config_dir, self.registry)
        self.grpc_server: grpc.aio.Server | None = None
        self.admin_runner: web.AppRunner | None = None
        self.xds_port = 0
        self.admin_port = 0
        self._watch_task: asyncio.Task | None = None

    async def start(self) -> None:
        self.config_dir.load_all()
        self.grpc_server = grpc.aio.server(options=SERVER_OPTIONS + KEEPALIVE_OPTIONS)
        AdsServer(self.cache, self.settings.ads_limits).register(self.grpc_server)
        gateway.register(self.grpc_server, self.registry)
        host, port = split_host_port(self.settings.xds, "--xds")
        self.xds_port = self.grpc_server.add_insecure_port(f"{host}:{port}")
        if self.xds_port == 0:
            raise OSError(f"cannot bind the xDS address {self.settings.xds}: is it in use?")
        await self.grpc_server.start()

        self.admin_runner = web.AppRunner(admin.make_app(self.registry), access_log=None)
        await self.admin_runner.setup()
        ahost, aport = split_host_port(self.settings.admin, "--admin")
        site = web.TCPSite(self.admin_runner, ahost, aport)
        await site.start()
        self.admin_port = site._server.sockets[0].getsockname()[1]  # port 0 → the bound one

        if self.settings.watch:
            watching = asyncio.Event()
            self._watch_task = asyncio.create_task(self.config_dir.watch(watching), name="config-dir-watch")
            await asyncio.wait_for(watching.wait(), timeout=10)
        log.info(
            "event=started xds=%s:%d admin=%s:%d config_dir=%s shards=%d rejected=%d",
            host, self.xds_port, ahost, self.admin_port, self.settings.config_dir,
            len(self.registry.shards), len(self.registry.rejections),
        )

    async def stop(self) -> None:
        if self._watch_task:
            self._watch_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch_task
        if self.grpc_server:
            await self.grpc_server.stop(grace=0.5)
        if self.admin_runner:
            await self.admin_runner.cleanup()
        log.info("event=stopped")


async def run(settings: ServerSettings) -> None:
    raise_open_files_limit()
    server = XdsServer(settings)
    await server.start()
    settle_heap()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await server.stop()
