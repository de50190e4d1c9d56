"""The reconcile loop: observe → plan → act → report, until the agent is stopped.

A pass runs on every runtime event (a container died, a health status changed), on
every config change from the xds_server, when Envoy changes state, and on a timer, so
a dead DAL, a changed config and a lost Envoy all take the same path back to the goal
state. The plan is ``plan.plan`` (pure); this module carries it out and tells the
xds_server what the host looks like now.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import grpc

from dgw_api.v1 import gateway_pb2
from xds_server.config import ConfigError, RuntimeConfig, load_served_config

from .config import SidecarSettings
from .control import Connected, ControlClient, Disconnected
from .envoy_supervisor import EnvoyStatus, EnvoySupervisor
from .log import EventLog
from .plan import (
    Action,
    Backoff,
    Health,
    Kind,
    Observed,
    Plan,
    RestartPolicy,
    State,
    plan,
    record_attempt,
    settle,
    with_unhealthy_since,
)
from .ports import CLAIMS, assign_ports, port_in_use
from .runtimes.base import DalRunError, Runtime
from .spec import DalSpec, SpecError, build_spec

_CONFIG_CACHE = "last-config.json"
# While something is converging (Envoy not ready yet, a DAL starting) the loop looks
# again this often even without an event: Envoy's ACK has no event of its own.
_CONVERGING_POLL_S = 0.2
_CONVERGING_QUICK_FOR_S = 10.0
_STUCK_POLL_S = 1.0
_CONNECT_TIMEOUT_S = 0.2

PB_HEALTH = {
    Health.HEALTHY: gateway_pb2.HEALTHY,
    Health.NONE: gateway_pb2.HEALTHY,
    Health.STARTING: gateway_pb2.STARTING,
    Health.UNHEALTHY: gateway_pb2.UNHEALTHY,
}


@dataclass
class Desired:
    specs: dict[str, DalSpec] = field(default_factory=dict)
    blocked: set[str] = field(default_factory=set)  # in the config, cannot be built now
    errors: dict[str, str] = field(default_factory=dict)  # status key → message


class Agent:
    def __init__(
        self,
        settings: SidecarSettings,
        runtime: Runtime,
        control: ControlClient,
        envoy: EnvoySupervisor | None,
        state_dir: Path,
        log: EventLog,
        clock: Callable[[], float] = time.time,
    ):
        self.settings = settings
        self.runtime = runtime
        self.control = control
        self.envoy = envoy
        self.state_dir = state_dir
        self.log = log
        self.clock = clock
        self.policy = RestartPolicy(
            backoff_base_s=settings.backoff_base_s,
            backoff_max_s=settings.backoff_max_s,
            backoff_reset_s=settings.backoff_reset_s,
            unhealthy_grace_s=settings.unhealthy_grace_s,
        )
        self.config: RuntimeConfig | None = None
        self.config_version: str | None = None
        self.history: dict[str, Backoff] = {}
        self.report: gateway_pb2.NodeReport | None = None
        self.envoy_status = EnvoyStatus()
        self._unhealthy_since: dict[str, float] = {}
        self._action_errors: dict[str, str] = {}  # dal → last failed action's message
        self._logged_waits: dict[str, float] = {}
        self._logged_errors: dict[str, str] = {}
        self._busy: dict[str, asyncio.Task] = {}  # dal → its actions in flight
        self._acted_since_observe: set[str] = set()
        self._owner = f"{settings.shard}/{settings.node_id}"
        self._wake = asyncio.Event()
        self._wake_at: float | None = None
        self._report_dirty = asyncio.Event()
        self._control_up = False
        self._stopping = False
        self._tcp_pending = False
        self._converging_since: float | None = None

    @property
    def control_connected(self) -> bool:
        return self._control_up

    # --- the loop ------------------------------------------------------------------

    def wake(self, reason: str) -> None:
        self.log.debug("wake", reason=reason)
        self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._load_cached_config()
        await self.runtime.start(self.wake)
        if self.envoy is not None:
            await self.envoy.start(self.wake)
        tasks = [
            asyncio.create_task(self._watch_config(), name="watch-config"),
            asyncio.create_task(self._send_reports(), name="reports"),
        ]
        stopper = asyncio.create_task(stop.wait())
        last_error: str | None = None
        try:
            while not stop.is_set():
                try:
                    await self.reconcile()
                except Exception as e:
                    error = f"{type(e).__name__}: {e}"
                    # Once per distinct error: a lost engine must not flood the log.
                    emit = self.log.debug if error == last_error else self.log.error
                    emit("reconcile_failed", error=error)
                    logging.getLogger(__name__).debug("reconcile_failed", exc_info=True)
                    last_error = error
                else:
                    last_error = None
                await self._sleep(stopper)
        finally:
            stopper.cancel()
            await self._shutdown(tasks)

    async def _sleep(self, stopper: asyncio.Task) -> None:
        timeout = self.settings.resync_s
        if self._wake_at is not None:
            timeout = min(timeout, max(0.0, self._wake_at - self.clock()))
        poll = self._poll_s()
        if poll is not None:
            timeout = min(timeout, poll)
        waker = asyncio.create_task(self._wake.wait())
        await asyncio.wait({waker, stopper}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        waker.cancel()
        self._wake.clear()

    def _poll_s(self) -> float | None:
        """How soon to look again without an event: Envoy's ACK and a port starting
        to accept connections have no event of their own. Quick at first, slower
        for something that stays stuck (a NACKed listener)."""
        converging = self.report is None or self._tcp_pending or (
            self.envoy is not None and self.envoy_status.state != "ready"
        )
        if not converging:
            self._converging_since = None
            return None
        now = time.monotonic()
        if self._converging_since is None:
            self._converging_since = now
        quick = now - self._converging_since < _CONVERGING_QUICK_FOR_S
        return _CONVERGING_POLL_S if quick else _STUCK_POLL_S

    async def reconcile(self) -> Plan:
        """One pass: observe, plan, act, and update the report."""
        now = self.clock()
        if self.envoy is not None:
            self.envoy_status = await self.envoy.observe()
        busy_while_observing = set(self._busy)
        self._acted_since_observe.clear()
        observed = await self._readiness(await self.runtime.observe())
        busy_while_observing |= self._acted_since_observe
        observed, self._unhealthy_since = with_unhealthy_since(
            observed, self._unhealthy_since, now
        )
        self.history = settle(self.history, observed, now, self.policy)
        if self.config is None:
            # No goal yet (first start, server unreachable, no cache): touch nothing.
            desired = Desired(blocked={o.dal for o in observed})
        else:
            desired = self._desired(self.config, observed)
        the_plan = plan(desired.specs, observed, self.history, now, self.policy, desired.blocked)
        self._wake_at = the_plan.wake_at
        self._log_waits(the_plan)
        for o in observed:
            if o.live and o.health in (Health.HEALTHY, Health.NONE):
                self._action_errors.pop(o.dal, None)
        # A DAL whose last actions are still running (a slow create, a stop waiting
        # for its grace) is left out of this pass; the others go ahead meanwhile. So
        # is one whose actions ran while we observed: what we saw of it may predate
        # them (a create finishing mid-observe would otherwise be done twice). Its
        # completion wakes a fresh pass.
        changes = [
            a for a in the_plan.changes()
            if a.dal not in self._busy and a.dal not in busy_while_observing
        ]
        # Report what was observed before acting, with every live instance about to
        # be stopped as draining: Envoy routes around a DAL while it is replaced.
        going = {
            a.dal for a in changes
            if a.kind in (Kind.RECREATE, Kind.RESTART, Kind.REMOVE) and a.observed.live
        }
        worse = self._set_report(self._build_report(desired, observed, going))
        if (going or worse) and self._control_up:
            # Envoy must hear of it before the restart or stop begins, not after.
            await self._flush_report()
        by_dal: dict[str, list[Action]] = {}
        for a in changes:
            by_dal.setdefault(a.dal, []).append(a)
        for dal, actions in by_dal.items():
            task = asyncio.create_task(self._act_all(actions), name=f"act-{dal}")
            self._busy[dal] = task
            task.add_done_callback(lambda _, dal=dal: self._acted(dal))
        return the_plan

    async def _act_all(self, actions: list[Action]) -> None:
        for a in actions:
            await self._act(a)

    def _acted(self, dal: str) -> None:
        self._busy.pop(dal, None)
        self._acted_since_observe.add(dal)
        # Look again at once: what was just done changed what there is to observe.
        self.wake(f"actions on {dal} done")

    async def settled(self) -> None:
        """Wait for the actions in flight (tests, shutdown)."""
        while self._busy:
            await asyncio.gather(*self._busy.values(), return_exceptions=True)

    async def _readiness(self, observed: list[Observed]) -> list[Observed]:
        """A DAL without a health check is ready once all its ports accept
        connections: until then Envoy must not be sent there."""
        out = []
        self._tcp_pending = False
        for o in observed:
            if o.live and o.health is Health.NONE and o.ports:
                accepting = await asyncio.gather(
                    *(_accepts(self.settings.bind_address, p) for p in o.ports.values())
                )
                if not all(accepting):
                    o = replace(o, health=Health.STARTING)
                    self._tcp_pending = True
            out.append(o)
        return out

    # --- desired state -------------------------------------------------------------

    def _desired(self, cfg: RuntimeConfig, observed: list[Observed]) -> Desired:
        s = self.settings
        out = Desired()
        reserved: dict[int, str] = {}
        for name, listener in cfg.proxy_config.public_listeners.items():
            port = listener.address.port
            if port is None:
                continue
            reserved[port] = f"public listener {name}"
            if port not in self.envoy_status.ports and port_in_use(port):
                out.errors[f"listener.{name}"] = (
                    f"port {port} of public listener {name} is in use by another process; "
                    f"Envoy cannot listen there: free it or change "
                    f"proxy_config.public_listeners.{name}.path"
                )
        admin = self.envoy.admin_address if self.envoy else None
        if admin and admin.rpartition(":")[2].isdigit():
            reserved[int(admin.rpartition(":")[2])] = "envoy admin"
        reserved.update(CLAIMS.others(self._owner))
        best: dict[str, Observed] = {}
        for o in sorted(observed, key=lambda o: (not o.live, -(o.started_at or 0))):
            best.setdefault(o.dal, o)
        assignment = assign_ports(
            {name: list(d.container_listeners) for name, d in cfg.container_dals.items()},
            previous={dal: dict(o.ports) for dal, o in best.items()},
            reserved=reserved,
            owned={p for o in observed if o.live for p in o.ports.values()},
            in_use=port_in_use,
            port_range=s.dal_ports,
        )
        CLAIMS.claim(self._owner, {p for ports in assignment.ports.values() for p in ports.values()})
        for name in cfg.container_dals:
            if name in assignment.errors:
                out.blocked.add(name)
                out.errors[f"dal.{name}"] = assignment.errors[name]
                continue
            try:
                out.specs[name] = build_spec(
                    cfg,
                    name,
                    shard=s.shard,
                    node=s.node_id,
                    host_ports=assignment.ports[name],
                    network_mode=self.runtime.network_mode,
                    bind_address=s.bind_address,
                )
            except SpecError as e:
                out.blocked.add(name)
                out.errors[f"dal.{name}"] = str(e)
        for key, message in out.errors.items():
            if self._logged_errors.get(key) != message:
                self.log.error("goal_unreachable", what=key, error=message)
        self._logged_errors = dict(out.errors)
        return out

    # --- act -----------------------------------------------------------------------

    async def _act(self, a: Action) -> None:
        log = self.log.bind(dal=a.dal)
        spec, obs = a.spec, a.observed
        try:
            if a.kind is Kind.CREATE:
                log.info("dal_create", reason=a.reason, spec=spec.spec_hash, ports=_ports(spec))
                await self.runtime.create(spec)
            elif a.kind is Kind.RECREATE:
                log.info(
                    "dal_recreate", reason=a.reason, old=obs.spec_hash, new=spec.spec_hash,
                    ports=_ports(spec),
                )
                await self.runtime.remove(obs)
                await self.runtime.create(spec)
            elif a.kind is Kind.START:
                log.info("dal_start", reason=a.reason)
                self.history = record_attempt(self.history, a.dal, spec.spec_hash, self.clock())
                await self.runtime.start_instance(obs, spec)
            elif a.kind is Kind.RESTART:
                await self._log_failure(log, a)
                self.history = record_attempt(self.history, a.dal, spec.spec_hash, self.clock())
                await self.runtime.restart(obs, spec)
            elif a.kind is Kind.REMOVE:
                log.info("dal_remove", reason=a.reason, ref=obs.ref[:12])
                await self.runtime.remove(obs)
                if self.config is None or a.dal not in self.config.container_dals:
                    self.history.pop(a.dal, None)
                    self._action_errors.pop(a.dal, None)
        except DalRunError as e:
            if a.kind in (Kind.CREATE, Kind.RECREATE):
                self.history = record_attempt(self.history, a.dal, spec.spec_hash, self.clock())
            self._action_errors[a.dal] = str(e)
            log.error("dal_failed", action=a.kind.value, error=str(e))

    async def _log_failure(self, log: EventLog, a: Action) -> None:
        obs = a.observed
        lines = await self.runtime.logs(obs, self.settings.crash_log_lines)
        attempts = self.history.get(a.dal)
        n = attempts.attempts + 1 if attempts and attempts.spec_hash == a.spec.spec_hash else 1
        if obs.state is State.CREATED:
            # Its start failed (the error says why); the restart below logs the retry.
            return
        if obs.state is State.RUNNING:
            message = f"unhealthy: {a.reason}"
            log.error("dal_unhealthy_restart", reason=a.reason, attempt=n,
                      last_lines=" | ".join(lines))
        else:
            code = "unknown" if obs.exit_code is None else obs.exit_code
            message = f"exited with code {code}" + (f": {obs.error}" if obs.error else "")
            if lines:
                message += f" (last output: {lines[-1][:200]})"
            log.error("dal_crashed", exit_code=code, error=obs.error, attempt=n,
                      last_lines=" | ".join(lines))
        self._action_errors[a.dal] = message

    def _log_waits(self, the_plan: Plan) -> None:
        for a in the_plan.actions:
            if a.kind is Kind.WAIT and self._logged_waits.get(a.dal) != a.not_before:
                self._logged_waits[a.dal] = a.not_before
                self.log.bind(dal=a.dal).info(
                    "dal_backoff", reason=a.reason,
                    retry_in=max(0.0, (a.not_before or 0) - self.clock()),
                )

    # --- report --------------------------------------------------------------------

    def _build_report(
        self, desired: Desired, observed: list[Observed], going: set[str] = frozenset()
    ) -> gateway_pb2.NodeReport:
        s = self.settings
        cfg = self.config
        by_dal: dict[str, list[Observed]] = {}
        for o in observed:
            by_dal.setdefault(o.dal, []).append(o)
        endpoints = []
        all_healthy = cfg is not None and not desired.errors
        for dal in sorted(cfg.container_dals if cfg else {}):
            spec = desired.specs.get(dal)
            inst = _current(by_dal.get(dal, []), spec)
            health, message = self._health_of(dal, inst, spec)
            if dal in going:
                health, message = gateway_pb2.DRAINING, "being replaced"
            for listener in sorted(cfg.container_dals[dal].container_listeners):
                port = None
                if inst is not None and inst.live:
                    port = inst.ports.get(listener)
                if port is None and spec is not None:
                    port = spec.host_ports.get(listener)
                if port is None:
                    continue
                endpoints.append(
                    gateway_pb2.Endpoint(
                        dal=dal,
                        listener=listener,
                        address=s.bind_address,
                        port=port,
                        health=gateway_pb2.DRAINING if self._stopping else health,
                        message=message,
                    )
                )
            if health != gateway_pb2.HEALTHY:
                all_healthy = False
        envoy_ok = self.envoy is None or self.envoy_status.state == "ready"
        registered = all_healthy and envoy_ok and not self._stopping
        registrations = []
        if registered and cfg is not None:
            for r in cfg.registrations:
                registrations.extend(r.addresses())
        status = {
            "runtime": self.runtime.name,
            "network_mode": self.runtime.network_mode,
            "config_version": self.config_version or "",
            "control": "connected" if self._control_up else "disconnected",
            "state": "stopping" if self._stopping else ("serving" if registered else "converging"),
        }
        if self.envoy is not None:
            status["envoy"] = self.envoy_status.state
            if self.envoy_status.message:
                status["envoy.message"] = self.envoy_status.message
        for key, message in sorted(desired.errors.items()):
            status[f"error.{key}"] = message
        for dal, message in sorted(self._action_errors.items()):
            status.setdefault(f"error.dal.{dal}", message)
        return gateway_pb2.NodeReport(
            shard=s.shard,
            node_id=s.node_id,
            endpoints=endpoints,
            registrations=registrations,
            host_address=s.host_address,
            status=status,
        )

    def _health_of(
        self, dal: str, inst: Observed | None, spec: DalSpec | None
    ) -> tuple[int, str]:
        error = self._action_errors.get(dal, "")
        if inst is None:
            return (gateway_pb2.UNHEALTHY, error) if error else (gateway_pb2.STARTING, "creating")
        if not inst.live:
            code = "unknown" if inst.exit_code is None else inst.exit_code
            return gateway_pb2.UNHEALTHY, error or f"exited with code {code}"
        health = PB_HEALTH[inst.health]
        if health == gateway_pb2.UNHEALTHY:
            return health, error or "health check failing"
        if health == gateway_pb2.STARTING:
            if spec is not None and spec.healthcheck is None:
                return health, "not accepting connections yet"
            return health, "health check not passed yet"
        return health, ""

    def _set_report(self, report: gateway_pb2.NodeReport) -> bool:
        """Keep ``report`` as the one to send; True if an endpoint stopped being
        healthy (then it should go out at once)."""
        if report == self.report:
            return False
        before, self.report = self.report, report
        self._log_report_change(before, report)
        self._report_dirty.set()
        was_healthy = {
            (e.dal, e.listener) for e in (before.endpoints if before else [])
            if e.health == gateway_pb2.HEALTHY
        }
        return any(
            (e.dal, e.listener) in was_healthy and e.health != gateway_pb2.HEALTHY
            for e in report.endpoints
        )

    def _log_report_change(
        self, before: gateway_pb2.NodeReport | None, after: gateway_pb2.NodeReport
    ) -> None:
        old = {(e.dal, e.listener): e.health for e in before.endpoints} if before else {}
        for e in after.endpoints:
            if old.get((e.dal, e.listener)) != e.health:
                self.log.bind(dal=e.dal).info(
                    "endpoint_health", listener=e.listener, port=e.port,
                    health=gateway_pb2.Health.Name(e.health), message=e.message,
                )
        was = list(before.registrations) if before else []
        if was != list(after.registrations):
            if after.registrations:
                self.log.info("registered", addresses=",".join(after.registrations))
            elif was:
                self.log.info("deregistered", addresses=",".join(was),
                              reason=after.status.get("state", ""))

    async def _flush_report(self) -> None:
        """Send the report now and wait for the server to take it (bounded)."""
        try:
            await self.control.report(self.report)
        except grpc.aio.AioRpcError as e:
            self.log.warning("report_failed", error=f"{e.code().name}: {e.details()}")

    async def _send_reports(self) -> None:
        """Send the latest report when it changes, and again now and then (the
        server may have restarted); on failure retry with backoff."""
        failures = 0
        while True:
            try:
                await asyncio.wait_for(self._report_dirty.wait(), self.settings.report_every_s)
            except TimeoutError:
                pass
            self._report_dirty.clear()
            report = self.report
            if report is None:
                continue
            try:
                await self.control.report(report)
                failures = 0
            except grpc.aio.AioRpcError as e:
                failures += 1
                delay = min(self.settings.reconnect_base_s * 2 ** (failures - 1),
                            self.settings.reconnect_max_s)
                if failures == 1 or self._control_up:
                    self.log.warning("report_failed", error=f"{e.code().name}: {e.details()}",
                                     retry_in=delay)
                await asyncio.sleep(delay)
                self._report_dirty.set()

    # --- config --------------------------------------------------------------------

    async def _watch_config(self) -> None:
        async for event in self.control.watch():
            if isinstance(event, Connected):
                self._control_up = True
                self._report_dirty.set()
            elif isinstance(event, Disconnected):
                self._control_up = False
            else:
                self._apply_config(event.version, event.yaml, source="xds_server")

    def _apply_config(self, version: str, text: str, source: str) -> None:
        if version == self.config_version:
            return
        try:
            cfg = load_served_config(text, f"{source}:{self.settings.shard}").runtime()
        except ConfigError as e:
            self.log.error("config_rejected", version=version, source=source, error=str(e))
            return
        self.config, self.config_version = cfg, version
        self.log.info(
            "config_applied", version=version, source=source,
            dals=",".join(sorted(cfg.container_dals)) or "-",
        )
        if source == "xds_server":
            self._save_cached_config(version, text)
        self.wake("config changed")

    def _load_cached_config(self) -> None:
        path = self.state_dir / _CONFIG_CACHE
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return
        except (OSError, ValueError) as e:
            self.log.warning("config_cache_unreadable", file=str(path), error=str(e))
            return
        self._apply_config(data.get("version", ""), data.get("yaml", ""), source="cache")

    def _save_cached_config(self, version: str, text: str) -> None:
        path = self.state_dir / _CONFIG_CACHE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"version": version, "yaml": text}))
        tmp.replace(path)

    # --- stop ----------------------------------------------------------------------

    async def _shutdown(self, tasks: list[asyncio.Task]) -> None:
        """Drain and deregister, stop Envoy; DALs keep running for the next agent."""
        self._stopping = True
        self.log.info("stopping", drain_s=self.settings.drain_s)
        # Half-done actions would leave half-made DALs: let them finish.
        await self.settled()
        try:
            observed = await self.runtime.observe()
            desired = self._desired(self.config, observed) if self.config else Desired()
            self._set_report(self._build_report(desired, observed))
            await self._flush_report()
        except (DalRunError, OSError) as e:
            self.log.warning("final_report_failed", error=str(e))
        if self.envoy is not None:
            await self.envoy.drain()
            await asyncio.sleep(self.settings.drain_s)
            await self.envoy.stop()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.settings.stop_dals_on_exit:
            for o in await self.runtime.observe():
                await self.runtime.remove(o)
        await self.runtime.close()
        await self.control.close()
        CLAIMS.release(self._owner)
        self.log.info("stopped")


async def _accepts(host: str, port: int) -> bool:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), _CONNECT_TIMEOUT_S)
    except (TimeoutError, OSError):
        return False
    writer.close()
    return True


def _current(instances: list[Observed], spec: DalSpec | None) -> Observed | None:
    if not instances:
        return None
    want = spec.spec_hash if spec else ""
    return sorted(
        instances, key=lambda o: (o.spec_hash != want, not o.live, -(o.started_at or 0.0))
    )[0]


def _ports(spec: DalSpec) -> str:
    return ",".join(f"{k}:{v}" for k, v in spec.host_ports.items()) or "-"
