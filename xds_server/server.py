"""The xds_server process: config store ← (API, config dir) → registry (translate) →
cache → ADS.

The config store in the data dir is the source of truth: at start every shard's latest
stored version is served, then the config dir's files are compared with it (a changed
file becomes a new version). xDS versions are content hashes, so a restarted server
serves the same versions and a reconnecting Envoy is sent nothing it already holds.

One asyncio loop carries the gRPC server (ADS for Envoys, ``dgw.v1.Gateway`` for
sidecars), the admin HTTP API, the config dir watcher and the housekeeping (node
reports persisted and expired). Neither port is shared with another process: a
second server on the same ``--xds`` or ``--admin`` fails to start (``BindError``)
instead of splitting the Envoys between two control planes.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import gc
import logging
import resource
import signal
import time

import grpc
from aiohttp import web

from common.hostport import split_host_port
from xds_server import report_file
from xds_server.ads import SERVER_OPTIONS, AdsServer
from xds_server.api import admin, auth, fleet, gateway
from xds_server.api.admin_http import LimitedSite
from xds_server.api.admin_http import runner as admin_runner
from xds_server.cache import SnapshotCache
from xds_server.changes import Changes
from xds_server.config import EnvPolicy
from xds_server.security.token_store import SqliteTokenStore
from xds_server.settings import ServerSettings
from xds_server.shards import ShardRegistry
from xds_server.sources.config_dir import ConfigDir
from xds_server.store import ConfigStore, SqliteStore, StoreError
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
# gRPC sets SO_REUSEPORT by default: two servers on one port both bind and the kernel
# splits connections between them. Off, the second one fails to bind.
EXCLUSIVE_PORT = (("grpc.so_reuseport", 0),)
# How often silent nodes are expired and changed reports written (so a crash loses
# at most this much of the reports' history).
HOUSEKEEPING_INTERVAL_S = 0.25


class BindError(OSError):
    """A port the server needs is held by another process (one line, for the CLI)."""


class DataDirError(OSError):
    """The config store in the data dir cannot be opened (one line, for the CLI)."""


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
        self.limits = settings.limits
        self.cache = SnapshotCache()
        self.registry = ShardRegistry(
            self.cache, TranslateOptions(public_address=settings.public_address), self.limits
        )
        self.policy = EnvPolicy(settings.allowed_env)
        self.state_dir = settings.state_dir()
        self.store: ConfigStore | None = None
        self.changes: Changes | None = None
        self.config_dir = ConfigDir(settings.config_dir, self.registry, self.policy, self.limits)
        self.grpc_server: grpc.aio.Server | None = None
        self.admin_runner: web.AppRunner | None = None
        self.tokens: SqliteTokenStore | None = None
        # Where the first start saved its admin token (dgw reads it for a local server).
        self.admin_token_path = self.state_dir / auth.ADMIN_TOKEN_FILE
        self.xds_port = 0
        self.admin_port = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._housekeeping_failure: str | None = None

    async def start(self) -> None:
        """Bind both ports and load the config; on any failure release what was taken
        (so that no half-started gRPC server outlives the event loop)."""
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise

    async def _start(self) -> None:
        for shard, node in report_file.read(self.state_dir, time.time(), self.limits.report_ttl_s):
            self.registry.restore(shard, node)
        try:
            self.store = await SqliteStore.open(self.state_dir)
        except StoreError as e:
            raise DataDirError(str(e)) from None
        self.changes = Changes(self.store, self.registry, self.policy, self.limits)
        self.config_dir.changes = self.changes
        await self.changes.load()  # what was stored is served first, as it was
        await self.config_dir.rescan()  # then files changed meanwhile become versions
        self.grpc_server = grpc.aio.server(
            options=SERVER_OPTIONS + KEEPALIVE_OPTIONS + EXCLUSIVE_PORT
        )
        AdsServer(self.cache, self.settings.ads_limits).register(self.grpc_server)
        gateway.register(self.grpc_server, self.registry)
        host, port = split_host_port(self.settings.xds, "--xds")
        try:
            self.xds_port = self.grpc_server.add_insecure_port(f"{host}:{port}")
        except RuntimeError:
            self.xds_port = 0
        if self.xds_port == 0:
            raise BindError(f"cannot listen on --xds {self.settings.xds}: the port is in use "
                            "(another dgw server?) or the address is not local")
        await self.grpc_server.start()

        self.admin_runner = admin_runner(await self._admin_app(), self.limits)
        await self.admin_runner.setup()
        ahost, aport = split_host_port(self.settings.admin, "--admin")
        site = LimitedSite(self.admin_runner, ahost, aport, self.limits.admin_connections)
        try:
            await site.start()
        except OSError as e:
            raise BindError(f"cannot listen on --admin {self.settings.admin}: "
                            f"{e.strerror or e} (another dgw server?)") from None
        self.admin_port = site.port

        self._tasks.append(asyncio.create_task(self._housekeeping(), name="housekeeping"))
        if self.settings.watch:
            watching = asyncio.Event()
            self._tasks.append(
                asyncio.create_task(self.config_dir.watch(watching), name="config-dir-watch")
            )
            await asyncio.wait_for(watching.wait(), timeout=10)
        log.info(
            "event=started xds=%s:%d admin=%s:%d config_dir=%s data_dir=%s shards=%d rejected=%d "
            "restored_reports=%d",
            host, self.xds_port, ahost, self.admin_port, self.config_dir.directory, self.state_dir,
            len(self.registry.shards), len(self.registry.rejections),
            len(self.registry.all_reports()),
        )

    async def _admin_app(self) -> web.Application:
        """The admin API behind access control; the config store keeps the audit log."""
        assert self.store is not None and self.changes is not None  # opened by _start
        self.tokens = SqliteTokenStore.open(self.state_dir)
        auth.ensure_admin_token(self.tokens, self.state_dir, dt.datetime.now(dt.UTC))
        app = admin.make_app(self.registry, self.problem, self.changes)
        fleet.add_routes(app, self.registry)
        auth.install(app, auth.Access(
            self.tokens, self.store, metrics_public=self.settings.metrics_public,
            body_timeout_s=self.limits.admin_body_timeout_s,
        ))  # fmt: skip
        return app

    def problem(self) -> str | None:
        """Why the server is unhealthy (``/healthz`` fails), or None."""
        return self.config_dir.failure or self._housekeeping_failure

    async def _housekeeping(self) -> None:
        """Expire silent nodes and persist changed reports, every HOUSEKEEPING_INTERVAL_S."""
        while True:
            await asyncio.sleep(HOUSEKEEPING_INTERVAL_S)
            try:
                self.registry.expire_reports(time.time())
                await self.persist_reports()
                self._housekeeping_failure = None
            except OSError as e:
                self._housekeeping_failure = f"cannot write {self.state_dir}: {e.strerror or e}"
                log.error("event=reports_not_persisted dir=%s error=%s", self.state_dir, e)

    async def persist_reports(self) -> None:
        if not self.registry.dirty:
            return
        self.registry.dirty = False
        data = report_file.encode(self.registry.all_reports())
        await asyncio.to_thread(report_file.write, self.state_dir, data)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        with contextlib.suppress(OSError):
            await self.persist_reports()
        if self.grpc_server:
            await self.grpc_server.stop(grace=0.5)
        if self.admin_runner:
            await self.admin_runner.cleanup()
        if self.tokens is not None:
            self.tokens.close()
            self.tokens = None
        if self.store is not None:
            await self.store.close()
            self.store = None
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
