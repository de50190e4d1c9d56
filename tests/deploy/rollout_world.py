"""An in-process control plane for rollout tests: the config store, the change path,
the registry and the rollout engine on a fake clock, with one simulated gateway host
per shard that reports what a sidecar would (the config it runs, its DALs' health,
its location) and, when asked, its Envoy's request counters."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from dgw_api.v1 import gateway_pb2
from xds_server.cache import SnapshotCache
from xds_server.changes import Changes, Request
from xds_server.deploy.rollout.engine import RolloutEngine, StartRequest
from xds_server.deploy.rollout.model import Options, Rollout
from xds_server.shards import ShardRegistry
from xds_server.store import AuditEntry, SqliteStore

REGIONS = {0: "us-east-1", 1: "us-east-1", 2: "eu-west-1", 3: "us-west-2"}


def shard_text(tier: int, env: str = "a", broken: bool = False, region: str | None = None,
               version_set: str = "") -> str:
    extra = "  broken:\n    container_listeners: {bk: 19999}\n" if broken else ""
    return f"""\
proxy_config:
  public_listeners:
    api: {{mode: http, path: {18000 + tier}}}
container_dals:
  kv:
    image: dgw-kv:test
    container_listeners: {{api: 18100}}
    env: {{X: {env}}}
{extra}deploy_desires:
  service_tier: {tier}
  locations:
    - {{account: prod, regions: [{region or REGIONS[tier]}]}}
  owners:
    - {{type: pager, value: team-{tier}}}
{version_set}"""


@dataclass
class World:
    store: SqliteStore
    changes: Changes
    engine: RolloutEngine
    now: float = 1_000_000.0
    # shard → the 5xx share its Envoy answers with while it runs a config with this env
    failing_env: dict[str, str] = field(default_factory=dict)
    requests: dict[str, tuple[int, int]] = field(default_factory=dict)  # shard → (total, 5xx) so far

    @property
    def registry(self) -> ShardRegistry:
        return self.changes.registry

    def clock(self) -> float:
        return self.now

    async def put(self, shard: str, text: str) -> None:
        head = await self.store.get(shard)
        await self.changes.put(shard, text, head.meta.number if head else 0, Request("tester"))

    def report(self, traffic: int = 0) -> None:
        """Every shard's host reports like a sidecar that has applied the served config:
        a DAL named 'broken' fails its health check."""
        for name, state in self.registry.shards.items():
            endpoints = [gateway_pb2.Endpoint(dal=dal, listener=lst, address="127.0.0.1", port=20000 + i,
                                              health=gateway_pb2.UNHEALTHY if dal == "broken" else gateway_pb2.HEALTHY,
                                              message="health check failing" if dal == "broken" else "")
                         for i, (dal, d) in enumerate(sorted(state.config.container_dals.items()))
                         for lst in d.container_listeners]
            self.registry.report(gateway_pb2.NodeReport(
                shard=name, node_id=f"{name}-n1", endpoints=endpoints,
                status={"config_version": state.config_version},
                location=gateway_pb2.Location(account="prod", region="us-east-1")))
            if traffic:
                env = state.config.container_dals["kv"].env.get("X")
                total, errors = self.requests.get(name, (0, 0))
                bad = traffic // 2 if self.failing_env.get(name) == env else 0
                total, errors = total + traffic, errors + bad
                self.requests[name] = (total, errors)
                self.registry.report_stats(gateway_pb2.EnvoyStats(
                    shard=name, node_id=f"{name}-n1", envoy_epoch="e1",
                    counters={"http.api.downstream_rq_total": total, "http.api.downstream_rq_5xx": errors}),
                    self.now)

    async def run(self, rollout: Rollout, seconds: float = 120.0, step_s: float = 1.0,
                  traffic: int = 0) -> Rollout:
        """Tick the engine, the hosts and the clock until the rollout ends."""
        end = self.now + seconds
        while self.now < end:
            self.report(traffic)
            await self.engine.tick()
            current = await self.engine.get(rollout.id)
            assert current is not None
            if current.state in ("succeeded", "failed", "aborted"):
                return current
            self.now += step_s
        raise AssertionError(f"rollout {rollout.id} did not end within {seconds} s of fake time")

    async def start(self, options: Options | None = None, **what: object) -> Rollout:
        return await self.engine.create(StartRequest("tester", "test", options or Options(bake_s=5, baseline_s=10),
                                                     **what))  # type: ignore[arg-type]

    async def audit(self) -> list[AuditEntry]:
        return list(reversed(await self.store.audit_log(limit=1000)))


async def open_world(data: Path) -> World:
    store = await SqliteStore.open(data)
    changes = Changes(store, ShardRegistry(SnapshotCache()))
    await changes.load()
    world = World(store, changes, None)  # type: ignore[arg-type]
    world.engine = RolloutEngine(store, changes, clock=world.clock)
    return world
