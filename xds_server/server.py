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
import ipaddress
import logging
import resource
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
from aiohttp import web

from common.hostport import split_host_port
from xds_server import report_file
from xds_server.ads import SERVER_OPTIONS, AdsServer
from xds_server.ads.pacing import StartPacer
from xds_server.api import (
    admin,
    auth,
    deploy_api,
    fleet,
    gateway,
    migrations_api,
    replicas_api,
    revocations_api,
)
from xds_server.api.admin_http import (
    TRUSTED,
    LimitedSite,
    LimitedUnixSite,
    Trusted,
    admin_socket_path,
)
from xds_server.api.admin_http import runner as admin_runner
from xds_server.api.gateway import peer_ip
from xds_server.cache import SnapshotCache
from xds_server.changes import Changes
from xds_server.config import EnvPolicy
from xds_server.deploy.plan_worker import PlanService
from xds_server.deploy.rollout.engine import RolloutEngine
from xds_server.ha.owner import Owner
from xds_server.ha.replica import Replica, default_replica_id
from xds_server.ha.tokens import EtcdTokenStore
from xds_server.migrate.engine import MigrationEngine
from xds_server.redact import LogMasking
from xds_server.security.authz import ControlAuthz
from xds_server.security.ca import CaError, CertificateAuthority
from xds_server.security.identity import DEFAULT_TRUST_DOMAIN
from xds_server.security.revocations import REFRESH_S as REVOCATIONS_REFRESH_S
from xds_server.security.revocations import Revocation, Revocations
from xds_server.security.server_tls import ServingCertificate, load_or_init_ca
from xds_server.security.sessions import Ended, Lease, Sessions
from xds_server.security.signing import NodeSigner
from xds_server.security.token_store import SqliteTokenStore
from xds_server.security.tokens import DEFAULT_JOIN_TTL, mint
from xds_server.settings import ADMIN_SOCKET_FILE, ServerSettings
from xds_server.shards import ShardRegistry
from xds_server.sources.config_dir import ConfigDir
from xds_server.store import ConfigStore, SqliteStore, StoreError
from xds_server.store.etcd import EtcdStore
from xds_server.translate import DISCOVERY_SHARD, TranslateOptions

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
# An --insecure server repeats its warning this often, so no one reading the log misses it.
INSECURE_WARNING_EVERY_S = 60.0
_INSECURE_WARNING = (
    "event=insecure_control_channel WARNING: --insecure: the control channel is plaintext and "
    "unauthenticated; any local process may fetch any shard's config and report as any node"
)


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
        # Deploy desires: capacity plans (a worker process) and the rollouts' loop.
        self.plans: PlanService | None = None
        self.rollouts: RolloutEngine | None = None
        self.migrations: MigrationEngine | None = None  # data migrations: steps, the promotions' loop
        self._planning: set[asyncio.Future[Any]] = set()
        self.config_dir = ConfigDir(settings.config_dir, self.registry, self.policy, self.limits)
        self.grpc_server: grpc.aio.Server | None = None
        self.admin_runner: web.AppRunner | None = None
        # Bearer tokens of the admin API and the one-time join tokens of new hosts.
        self.tokens: SqliteTokenStore | EtcdTokenStore | None = None
        # With --store etcd://...: this server is one replica of several.
        self.replica: Replica | None = None
        # Where the first start saved its admin token (dgw reads it for a local server).
        self.admin_token_path = self.state_dir / auth.ADMIN_TOKEN_FILE
        self.xds_port = 0
        self.admin_port = 0
        self.admin_socket: Path | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._housekeeping_failure: str | None = None
        self._revocations_read = time.monotonic()
        self.ca: CertificateAuthority | None = None
        self.serving_cert: ServingCertificate | None = None
        self.join_port = 0
        self.sessions = Sessions(settings.ads_limits.max_streams_per_identity)
        self.revocations: Revocations | None = None  # with the store
        self.authz = ControlAuthz(DEFAULT_TRUST_DOMAIN, DISCOVERY_SHARD, enforce=not settings.insecure,
                                  revoked=self._revoked, sessions=self.sessions)  # fmt: skip
        self._log_masking = LogMasking(self.registry.secrets)

    def create_join_token(self, shard: str, ttl: dt.timedelta = DEFAULT_JOIN_TTL, name: str = "") -> str:
        """A one-time node token for ``shard``'s first certificate; shown once, stored hashed."""
        token, record = mint(name or f"join-{shard}", "node", dt.datetime.now(dt.UTC),
                             shard=shard, ttl=ttl, one_time=True)
        if self.tokens is None:
            raise RuntimeError("join tokens are made by a started server")
        self.tokens.add(record)
        return token

    async def start(self) -> None:
        """Bind both ports and load the config; on any failure release what was taken
        (so that no half-started gRPC server outlives the event loop)."""
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise

    async def _start(self) -> None:
        self._log_masking.install()
        # Every node's last report before anything is served: a restarted server gives
        # a reconnecting Envoy the endpoints it has, never an empty set.
        if self.settings.store is None:
            for shard, node in report_file.read(self.state_dir, time.time(), self.limits.report_ttl_s):
                self.registry.restore(shard, node)
            try:
                self.store = await SqliteStore.open(self.state_dir)
            except StoreError as e:
                raise DataDirError(str(e)) from None
            self.tokens = SqliteTokenStore.open(self.state_dir)
        else:
            await self._join_replicas(self.settings.store)
        assert self.store is not None and self.tokens is not None
        self.revocations = Revocations(self.store, self._end_streams)
        await self.revocations.refresh()
        auth.ensure_admin_token(self.tokens, self.state_dir, dt.datetime.now(dt.UTC))
        self.changes = Changes(self.store, self.registry, self.policy, self.limits)
        self.config_dir.changes = self.changes
        revision = await self.changes.load()  # what was stored is served first, as it was
        await self.config_dir.rescan()  # then files changed meanwhile become versions
        self.plans = PlanService(self.store)
        self.rollouts = RolloutEngine(self.store, self.changes)
        self.migrations = MigrationEngine(self.store, self.changes)
        self.changes.on_served.append(self._plan_ahead)
        for state in list(self.registry.shards.values()):
            self._plan_ahead(state.name)
        if self.replica is not None:
            # Of several replicas, the one that owns the job runs the rollouts' loop.
            self.replica.owners.append(Owner(self.replica.store.client, self.replica.store.prefix,
                                             self.replica.session, "rollouts", self._own_rollouts))  # fmt: skip
            self.replica.owners.append(Owner(self.replica.store.client, self.replica.store.prefix,
                                             self.replica.session, "migrations", self._own_migrations))  # fmt: skip
            self._tasks.append(asyncio.create_task(self.changes.follow(revision), name="follow-store"))
            self._tasks += [asyncio.create_task(task) for task in self.replica.tasks()]
        self.grpc_server = grpc.aio.server(options=SERVER_OPTIONS + KEEPALIVE_OPTIONS + EXCLUSIVE_PORT
                                           + self._connection_age())  # fmt: skip
        signer = self._security()
        AdsServer(self.cache, self.settings.ads_limits, self._admit_ads,
                  pacer=StartPacer(self.settings.stream_starts_per_s)).register(self.grpc_server)
        gateway.register(self.grpc_server, self.registry, self.authz, signer)
        host, _ = split_host_port(self.settings.xds, "--xds")
        if self.serving_cert is None:
            self.xds_port = self._bind("--xds", self.settings.xds, None)
        else:
            self.xds_port = self._bind("--xds", self.settings.xds, self.serving_cert.credentials(True))
            self.join_port = self._bind("--join", self.settings.join, self.serving_cert.credentials(False))
        await self.grpc_server.start()

        self.admin_runner = admin_runner(await self._admin_app(), self.limits)
        await self.admin_runner.setup()
        ahost, aport = split_host_port(self.settings.admin, "--admin")
        site = LimitedSite(self.admin_runner, ahost, aport, self.limits.admin_connections,
                           self.admin_runner.app[TRUSTED])
        try:
            await site.start()
        except OSError as e:
            raise BindError(f"cannot listen on --admin {self.settings.admin}: "
                            f"{e.strerror or e} (another dgw server?)") from None
        self.admin_port = site.port
        await self._admin_socket()

        if self.replica is None:  # else the replicas that own "rollouts" and "migrations" run them
            await self.rollouts.start()
            await self.migrations.start()
        self._tasks.append(asyncio.create_task(self._housekeeping(), name="housekeeping"))
        if self.settings.insecure:
            self._tasks.append(asyncio.create_task(self._warn_insecure(), name="insecure-warning"))
        if self.settings.watch:
            watching = asyncio.Event()
            self._tasks.append(
                asyncio.create_task(self.config_dir.watch(watching), name="config-dir-watch")
            )
            await asyncio.wait_for(watching.wait(), timeout=10)
        log.info(
            "event=started xds=%s:%d join=%s admin=%s:%d admin_socket=%s tls=%s config_dir=%s data_dir=%s "
            "shards=%d rejected=%d restored_reports=%d",
            host, self.xds_port, self.join_port or "-", ahost, self.admin_port, self.admin_socket or "-",
            "off" if self.settings.insecure else "mtls", self.config_dir.directory, self.state_dir,
            len(self.registry.shards), len(self.registry.rejections),
            len(self.registry.all_reports()),
        )

    async def _join_replicas(self, url: str) -> None:
        """Open the etcd store and take this replica's place among the others."""
        try:
            self.store = store = await EtcdStore.open(url)
        except (StoreError, ValueError) as e:
            raise DataDirError(f"--store: {e}") from None
        replica_id = self.settings.replica_id or default_replica_id()
        try:
            self.replica = await Replica.join(
                store, self.registry, replica_id=replica_id, lease_ttl_s=self.settings.lease_ttl_s,
                report_ttl_s=self.limits.report_ttl_s,
                info={"xds": self.settings.xds, "admin": self.settings.admin, "join": self.settings.join},
            )  # fmt: skip
        except StoreError as e:
            raise DataDirError(f"--store {url}: {e}") from None
        self.tokens = self.replica.tokens

    def _connection_age(self) -> tuple[tuple[str, int], ...]:
        """gRPC closes each connection after the maximum age, with ±10 % jitter of its
        own, then lets its streams finish for the grace: nodes reconnect, spread over
        the replicas up now."""
        age = self.settings.max_connection_age_s
        if age is None:
            return ()
        return (("grpc.max_connection_age_ms", int(age * 1000)),
                ("grpc.max_connection_age_grace_ms", int(self.settings.max_connection_age_grace_s * 1000)))

    async def _admin_app(self) -> web.Application:
        """The admin API behind access control; the config store keeps the audit log."""
        assert self.store is not None and self.tokens is not None  # opened by _start
        app = admin.make_app(self.registry, self.problem, self.changes, self.settings.insecure)
        app[TRUSTED] = Trusted()
        changes = self.changes
        fleet.add_routes(app, self.registry,
                         lambda shard: head.number if changes and (head := changes.heads.get(shard)) else None)
        assert self.revocations is not None
        revocations_api.register(app, self.revocations, self.store, self.limits)
        assert self.plans is not None and self.rollouts is not None and changes is not None
        deploy_api.register(app, changes, self.plans, self.rollouts)
        assert self.migrations is not None
        migrations_api.register(app, self.migrations, self.limits)
        replicas_api.register(app, self.replica)
        auth.install(app, auth.Access(
            self.tokens, self.store, metrics_public=self.settings.metrics_public,
            body_timeout_s=self.limits.admin_body_timeout_s, json_depth=self.limits.admin_json_depth,
        ))  # fmt: skip
        return app
    async def _admin_socket(self) -> None:
        """The admin API on ``<data dir>/admin.sock`` too: where ``dgw`` sends the
        tokens it finds on disk, once the kernel has told it who answers."""
        assert self.admin_runner is not None
        path = admin_socket_path(self.state_dir)
        if path is None:
            log.warning("event=admin_socket_skipped reason=\"the path %s is too long for a Unix socket; "
                        "dgw sends this server only tokens given with --token or $DGW_TOKEN\"",
                        self.state_dir / ADMIN_SOCKET_FILE)  # fmt: skip
            return
        try:
            await LimitedUnixSite(self.admin_runner, path, self.limits.admin_connections,
                                  self.admin_runner.app[TRUSTED]).start()
        except OSError as e:
            raise BindError(f"cannot listen on the admin socket {path}: {e.strerror or e}") from None
        self.admin_socket = path

    def _security(self) -> NodeSigner | None:
        """The CA and the server's certificate (None and plaintext with --insecure)."""
        if self.settings.insecure:
            host, _ = split_host_port(self.settings.xds, "--xds")
            if not _is_loopback(host):
                raise ValueError(f"--insecure serves only loopback: --xds {self.settings.xds} is not "
                                 "(use 127.0.0.1, or drop --insecure to serve mTLS)")
            log.warning(_INSECURE_WARNING)
            return None
        try:
            self.ca = load_or_init_ca(self.settings.ca_directory())
        except CaError as e:
            raise ValueError(f"--ca-dir: {e}") from None
        ttl = dt.timedelta(seconds=self.settings.cert_ttl_s)
        self.serving_cert = ServingCertificate(self.ca, ttl, self.settings.server_names)
        assert self.tokens is not None  # opened by _start
        return NodeSigner(self.ca, self.tokens, ttl, revoked=self._revoked)

    def _admit_ads(self, context: grpc.aio.ServicerContext, shard: str, node_id: str,  # type: ignore[type-arg]
                   wake: Callable[[], None]) -> tuple[grpc.StatusCode, str] | Lease:  # fmt: skip
        caller = self.authz.caller(context)
        admitted = self.authz.ads(caller, shard, node_id) or self.authz.admit(
            caller, shard, node_id, peer_ip(context.peer()), wake)
        return admitted if isinstance(admitted, Lease) else (admitted.code, admitted.message)

    def _revoked(self, shard: str, node: str) -> str | None:
        """Why (shard, node) is revoked (when, by whom), or None."""
        revocation = self.revocations.revoked(shard, node) if self.revocations is not None else None
        if revocation is None:
            return None
        return f"revoked at {revocation.at} by {revocation.by}" + (f": {revocation.reason}" if revocation.reason else "")

    def _end_streams(self, revocation: Revocation) -> None:
        ended = self.sessions.end(revocation.shard, revocation.node, Ended(
            grpc.StatusCode.PERMISSION_DENIED,
            f"node {revocation.shard}/{revocation.node} was revoked: an admin may reinstate it "
            "(dgw node reinstate), then it needs a new join token"))  # fmt: skip
        log.warning("event=node_streams_ended shard=%s node=%s streams=%d", revocation.shard, revocation.node, ended)

    def _bind(self, flag: str, address: str, credentials: grpc.ServerCredentials | None) -> int:
        assert self.grpc_server is not None
        host, port = split_host_port(address, flag)
        target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        try:
            if credentials is None:
                bound = self.grpc_server.add_insecure_port(target)
            else:
                bound = self.grpc_server.add_secure_port(target, credentials)
        except RuntimeError:
            bound = 0
        if bound == 0:
            raise BindError(f"cannot listen on {flag} {address}: the port is in use "
                            "(another dgw server?) or the address is not local")
        return bound

    async def _warn_insecure(self) -> None:
        while True:
            await asyncio.sleep(INSECURE_WARNING_EVERY_S)
            log.warning(_INSECURE_WARNING)

    async def _own_rollouts(self) -> None:
        """The rollouts' loop, for as long as this replica owns it."""
        assert self.rollouts is not None
        await self.rollouts.start()
        try:
            await asyncio.Event().wait()
        finally:
            await self.rollouts.stop()

    async def _own_migrations(self) -> None:
        """The migrations' loop (promotion steps), for as long as this replica owns it."""
        assert self.migrations is not None
        await self.migrations.start()
        try:
            await asyncio.Event().wait()
        finally:
            await self.migrations.stop()

    def _plan_ahead(self, shard: str) -> None:
        """A served shard with capacity desires gets its plan computed in the background."""
        state = self.registry.shards.get(shard)
        desires = state.config.deploy_desires if state is not None else None
        if self.plans is None or not self.plans.installed or desires is None or desires.capacity is None:
            return
        try:
            request = self.plans.request(desires)
        except ValueError:
            return
        task = asyncio.ensure_future(self.plans.ask(request))
        self._planning.add(task)
        task.add_done_callback(self._planned)

    def _planned(self, task: asyncio.Future[Any]) -> None:
        self._planning.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("event=plan_ahead_failed error=%r", task.exception())

    def problem(self) -> str | None:
        """Why the server is unhealthy (``/healthz`` fails), or None."""
        replica = self.replica.problem() if self.replica is not None else None
        return self.config_dir.failure or self._housekeeping_failure or replica

    async def _housekeeping(self) -> None:
        """Expire silent nodes and persist changed reports, every HOUSEKEEPING_INTERVAL_S."""
        while True:
            await asyncio.sleep(HOUSEKEEPING_INTERVAL_S)
            if self.replica is not None:  # reports live under leases in etcd
                self.registry.stats.expire(time.time(), self.limits.report_ttl_s)
                continue
            try:
                self.registry.expire_reports(time.time())
                await self.persist_reports()
                await self._refresh_revocations()
                self._housekeeping_failure = None
            except OSError as e:
                self._housekeeping_failure = f"cannot write {self.state_dir}: {e.strerror or e}"
                log.error("event=reports_not_persisted dir=%s error=%s", self.state_dir, e)

    async def _refresh_revocations(self) -> None:
        """Revocations another server of an HA set recorded (this one's are in memory)."""
        now = time.monotonic()
        if self.revocations is None or now - self._revocations_read < REVOCATIONS_REFRESH_S:
            return
        self._revocations_read = now
        try:
            await self.revocations.refresh()
        except StoreError as e:
            log.error("event=revocations_not_read error=%s", e)

    async def persist_reports(self) -> None:
        if not self.registry.dirty:
            return
        self.registry.dirty = False
        data = report_file.encode(self.registry.all_reports())
        await asyncio.to_thread(report_file.write, self.state_dir, data)

    async def stop(self) -> None:
        if self.rollouts is not None:
            await self.rollouts.stop()
        if self.migrations is not None:
            await self.migrations.stop()
        if self.plans is not None:
            await self.plans.close()
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        if self.replica is None:
            with contextlib.suppress(OSError):
                await self.persist_reports()
        if self.grpc_server:
            await self.grpc_server.stop(grace=0.5)
        if self.admin_runner:
            await self.admin_runner.cleanup()
        if self.replica is not None:
            await self.replica.close()  # its tokens with it
            self.replica = self.tokens = None
        if self.tokens is not None:
            self.tokens.close()
            self.tokens = None
        if self.store is not None:
            await self.store.close()
            self.store = None
        log.info("event=stopped")
        self._log_masking.uninstall()


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


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
