"""The reconcile loop: observe → plan → act → report, until the agent is stopped.

A pass runs on every runtime event (a container died, a health status changed), on
every config change from the xds_server, when Envoy changes state, and on a timer, so
a dead DAL, a changed config and a lost Envoy all take the same path back to the goal
state. Each job has its own module; the agent only wires them into the loop:

- following the config: ``config_follower.ConfigFollower``
- the goal state: ``desired.build_desired`` (pure)
- what to do: ``plan.plan`` (pure)
- doing it: ``executor.Executor``
- what to tell the server: ``report.build_report`` (pure), sent by ``reporter.Reporter``
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from dgw_api.health import Health
from xds_server.config import RuntimeConfig

from .builds import BuildCheck, check_builds
from .config import SidecarSettings
from .config_follower import ConfigFollower
from .control import ControlClient
from .desired import Desired, HostPorts, build_desired, nothing_to_do
from .envoy_supervisor import EnvoyStatus, EnvoySupervisor
from .executor import Executor
from .log import EventLog
from .plan import (
    Change,
    Create,
    Observed,
    Plan,
    Recreate,
    Remove,
    Restart,
    RestartPolicy,
    Start,
    Wait,
    forget_recovered,
    plan,
    with_unhealthy_since,
)
from .ports import PortClaims, port_in_use
from .report import EnvoyView, Host, Situation, build_report, got_worse
from .reporter import Reporter
from .runtimes.base import DalRunError, Runtime
from .stats_sender import StatsSender

# While something is converging (Envoy not ready yet, a DAL starting) the loop looks
# again this often even without an event: Envoy's ACK has no event of its own.
_CONVERGING_POLL_S = 0.2
_CONVERGING_QUICK_FOR_S = 10.0
_STUCK_POLL_S = 1.0
_CONNECT_TIMEOUT_S = 0.2
# Stopping: how long the last report and closing the control channel may take.
FINAL_REPORT_TIMEOUT_S = 5.0
CONTROL_CLOSE_TIMEOUT_S = 2.0


class Agent:
    """Wires the jobs into one loop and holds what lives between passes: when each
    unhealthy instance was first seen so, and what was already logged."""

    def __init__(
        self,
        settings: SidecarSettings,
        runtime: Runtime,
        control: ControlClient,
        envoy: EnvoySupervisor | None,
        state_dir: Path,
        log: EventLog,
        claims: PortClaims,
        clock: Callable[[], float] = time.time,
        on_config: Callable[[RuntimeConfig], None] = lambda _: None,
    ):
        self.settings = settings
        self.runtime = runtime
        self.control = control
        self.envoy = envoy
        self.state_dir = state_dir
        self.log = log
        self.claims = claims
        self.clock = clock
        self.policy = RestartPolicy(
            backoff_base_s=settings.backoff_base_s,
            backoff_max_s=settings.backoff_max_s,
            backoff_reset_s=settings.backoff_reset_s,
            unhealthy_grace_s=settings.unhealthy_grace_s,
        )
        self._on_config = on_config
        self.follower = ConfigFollower(
            settings.shard, state_dir, log, on_change=self._followed, on_connect=self._connected
        )
        self.reporter = Reporter(
            control.report,
            every_s=settings.report_every_s,
            retry_base_s=settings.reconnect_base_s,
            retry_max_s=settings.reconnect_max_s,
            log=log,
        )
        self.stats_sender = (
            None if envoy is None else StatsSender(
                envoy.sample, control.report_stats, shard=settings.shard, node_id=settings.node_id,
                every_s=settings.stats_every_s, log=log,
            )
        )
        self.executor = Executor(
            runtime, log, crash_log_lines=settings.crash_log_lines, clock=clock,
            on_done=self.wake,
        )
        self.host = Host(
            shard=settings.shard, node_id=settings.node_id,
            bind_address=settings.bind_address, host_address=settings.host_address,
            runtime=runtime.name, network_mode=runtime.network_mode,
            account=settings.account, region=settings.region, stack=settings.stack,
        )
        self.envoy_status = EnvoyStatus()
        self.passes = 0  # reconcile passes done (tests wait on it)
        self._owner = f"{settings.shard}/{settings.node_id}"
        self._unhealthy_since: dict[str, float] = {}
        self._logged_waits: dict[str, float] = {}
        self._logged_errors: dict[str, str] = {}
        self._builds: dict[str, BuildCheck] = {}  # the pinned DALs' last tamper checks
        self._wake = asyncio.Event()
        self._wake_at: float | None = None
        self._stopping = False
        self._tcp_pending = False
        self._converging_since: float | None = None

    # --- the loop ------------------------------------------------------------------

    def wake(self, reason: str) -> None:
        self.log.debug("wake", reason=reason)
        self._wake.set()

    def _followed(self, reason: str) -> None:
        """The follower's news: a new config also goes to ``on_config`` (the SDS
        serves the TLS providers it names)."""
        if self.follower.config is not None and reason == "config changed":
            self._on_config(self.follower.config)
        self.wake(reason)

    def _connected(self) -> None:
        self.reporter.resend()  # the server may have lost our report

    async def run(self, stop: asyncio.Event) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.follower.load_cache()
        await self.runtime.start(self.wake)
        if self.envoy is not None:
            await self.envoy.start(self.wake)
        tasks = [
            asyncio.create_task(self.follower.follow(self.control.watch()), name="follow-config"),
            asyncio.create_task(self.reporter.run(), name="reports"),
        ]
        if self.stats_sender is not None:
            tasks.append(asyncio.create_task(self.stats_sender.run(), name="stats"))
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

    async def _sleep(self, stopper: asyncio.Task[bool]) -> None:
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
        converging = self.reporter.latest is None or self._tcp_pending or (
            self.envoy is not None and self.envoy_status.state != "ready"
        )
        if not converging:
            self._converging_since = None
            return None
        now = self.clock()
        if self._converging_since is None:
            self._converging_since = now
        quick = now - self._converging_since < _CONVERGING_QUICK_FOR_S
        return _CONVERGING_POLL_S if quick else _STUCK_POLL_S

    async def reconcile(self) -> Plan:
        """One pass: observe, plan, act, and update the report."""
        now = self.clock()
        if self.envoy is not None:
            self.envoy_status = await self.envoy.observe()
        busy_before = self.executor.begin_observe()
        observed = await self._readiness(await self.runtime.observe())
        unsure = self.executor.unsure(busy_before)
        observed, self._unhealthy_since = with_unhealthy_since(
            observed, self._unhealthy_since, now
        )
        ex = self.executor
        ex.history = forget_recovered(ex.history, observed, now, self.policy)
        ex.healed(observed)
        cfg = self.follower.config
        if cfg is not None:
            ex.forget(set(cfg.container_dals) | {o.dal for o in observed})
            self._builds = await check_builds(self.runtime, cfg, self.follower.pins)
        desired = self._desired(observed)
        the_plan = plan(desired.specs, observed, ex.history, now, self.policy, desired.blocked)
        self._wake_at = the_plan.wake_at
        self._log_waits(the_plan)
        # A DAL whose last actions are still running (a slow create, a stop waiting
        # for its grace) is left out of this pass; the others go ahead meanwhile.
        changes = [a for a in the_plan.changes() if a.dal not in unsure]
        # Report what was observed before acting, with every live instance about to
        # be stopped as draining: Envoy routes around a DAL while it is replaced.
        going = {a.dal for a in changes if _stops_live(a)}
        report = build_report(self._situation(desired, observed, going))
        urgent = bool(going) or got_worse(self.reporter.latest, report)
        # Envoy must hear of it before the restart or stop begins, not after.
        await self.reporter.publish(report, now=urgent and self.follower.connected)
        ex.launch(changes)
        self.passes += 1
        return the_plan

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

    def _desired(self, observed: list[Observed]) -> Desired:
        cfg = self.follower.config
        if cfg is None:
            return nothing_to_do(observed)
        s = self.settings
        ports = HostPorts(
            port_range=s.dal_ports,
            in_use=port_in_use,
            claimed=self.claims.others(self._owner),
            proxy_holds=self.envoy_status.ports,
        )
        desired = build_desired(
            cfg, observed, ports, shard=s.shard, node=s.node_id,
            network_mode=self.runtime.network_mode, bind_address=s.bind_address,
            builds=self._builds,
        )
        self.claims.claim(self._owner, desired.ports)
        problems = {**desired.errors, **{f"refused.dal.{d}": m for d, m in desired.refused.items()}}
        for key, message in problems.items():
            if self._logged_errors.get(key) != message:
                self.log.error("build_refused" if key.startswith("refused.") else "goal_unreachable",
                               what=key, error=message)  # fmt: skip
        self._logged_errors = problems
        return desired

    def _situation(
        self, desired: Desired, observed: list[Observed], going: set[str]
    ) -> Situation:
        envoy = None
        if self.envoy is not None:
            envoy = EnvoyView(self.envoy_status.state, self.envoy_status.message)
        return Situation(
            host=self.host,
            config=self.follower.config,
            config_version=self.follower.version,
            desired=desired,
            observed=observed,
            action_errors=dict(self.executor.errors),
            going=frozenset(going),
            envoy=envoy,
            control_up=self.follower.connected,
            stopping=self._stopping,
        )

    def _log_waits(self, the_plan: Plan) -> None:
        for a in the_plan.actions:
            if isinstance(a, Wait) and self._logged_waits.get(a.dal) != a.not_before:
                self._logged_waits[a.dal] = a.not_before
                self.log.bind(dal=a.dal).info(
                    "dal_backoff", reason=a.reason,
                    retry_in=max(0.0, a.not_before - self.clock()),
                )

    # --- stop ----------------------------------------------------------------------

    async def _shutdown(self, tasks: list[asyncio.Task[None]]) -> None:
        """Drain and deregister, stop Envoy; DALs keep running for the next agent."""
        self._stopping = True
        self.log.info("stopping", drain_s=self.settings.drain_s)
        # Half-done actions would leave half-made DALs: let them finish.
        await self.executor.settled()
        try:
            observed = await self.runtime.observe()
            desired = self._desired(observed)
            async with asyncio.timeout(FINAL_REPORT_TIMEOUT_S):
                await self.reporter.publish(
                    build_report(self._situation(desired, observed, set())), now=True
                )
        except (DalRunError, OSError, TimeoutError) as e:
            self.log.warning("final_report_failed", error=str(e))
        if self.envoy is not None:
            await self.envoy.drain()
            # Envoy finishes the requests in flight meanwhile.
            await asyncio.sleep(self.settings.drain_s)
            await self.envoy.stop()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.settings.stop_dals_on_exit:
            for o in await self.runtime.observe():
                await self.runtime.remove(o)
        await self.runtime.close()
        # gRPC's channel close can wait on a call it failed to cancel (grpc/grpc#32005,
        # #41875): a stopping agent must exit all the same.
        try:
            await asyncio.wait_for(self.control.close(), CONTROL_CLOSE_TIMEOUT_S)
        except TimeoutError:
            self.log.warning("control_close_timed_out", timeout_s=CONTROL_CLOSE_TIMEOUT_S)
        self.claims.release(self._owner)
        self.log.info("stopped")


def _stops_live(a: Change) -> bool:
    """Whether carrying ``a`` out stops an instance that is running now."""
    match a:
        case Recreate(observed=o) | Restart(observed=o) | Remove(observed=o):
            return o.live
        case Create() | Start():
            return False


async def _accepts(host: str, port: int) -> bool:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), _CONNECT_TIMEOUT_S)
    except (TimeoutError, OSError):
        return False
    writer.close()
    return True
