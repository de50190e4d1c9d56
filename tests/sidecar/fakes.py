"""In-memory stand-ins for the agent's collaborators: a clock, a runtime and a
Gateway server."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from dataclasses import replace

import grpc

from dgw_api.health import Health
from dgw_api.v1 import gateway_pb2, gateway_pb2_grpc
from sidecar.plan import Observed, State
from sidecar.runtimes.base import DalRunError, Notify, Runtime
from sidecar.spec import DalSpec
from testkit.wait import eventually


class FakeClock:
    """Epoch seconds that move only when the test says so."""

    def __init__(self, now: float = 1_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FakeRuntime(Runtime):
    """Instances are records; tests make them die or turn unhealthy."""

    name = "fake"
    network_mode = "host"

    def __init__(self, instances: Iterable[Observed] = (), clock: Callable[[], float] = time.time):
        self.instances: dict[str, Observed] = {o.dal: o for o in instances}
        self.clock = clock
        self.calls: list[tuple[str, str]] = []
        self.fail_create: dict[str, str] = {}
        self.notify: Notify = lambda reason: None
        self._serial = 0

    async def start(self, notify: Notify) -> None:
        self.notify = notify

    async def observe(self) -> list[Observed]:
        return list(self.instances.values())

    def _run(self, spec: DalSpec) -> None:
        self._serial += 1
        self.instances[spec.name] = Observed(
            dal=spec.name, ref=f"{spec.name}-{self._serial}", spec_hash=spec.spec_hash,
            state=State.RUNNING, health=Health.HEALTHY, ports=spec.host_ports,
            started_at=self.clock(),
        )

    async def create(self, spec: DalSpec) -> None:
        self.calls.append(("create", spec.name))
        if spec.name in self.fail_create:
            raise DalRunError(self.fail_create[spec.name])
        self._run(spec)

    async def start_instance(self, observed: Observed, spec: DalSpec) -> None:
        self.calls.append(("start", spec.name))
        self._run(spec)

    async def restart(self, observed: Observed, spec: DalSpec) -> None:
        self.calls.append(("restart", spec.name))
        self._run(spec)

    async def remove(self, observed: Observed) -> None:
        self.calls.append(("remove", observed.dal))
        self.instances.pop(observed.dal, None)

    async def logs(self, observed: Observed, lines: int) -> list[str]:
        return ["last words"]

    async def close(self) -> None:
        pass

    def kill(self, dal: str, code: int = 137) -> None:
        self.instances[dal] = replace(self.instances[dal], state=State.EXITED, exit_code=code)
        self.notify(f"killed {dal}")

    def set_health(self, dal: str, health: Health) -> None:
        self.instances[dal] = replace(self.instances[dal], health=health)
        self.notify(f"health {dal}")


class FakeGateway(gateway_pb2_grpc.GatewayServicer):
    """A ``dgw.v1.Gateway`` holding one shard config and every report it got."""

    def __init__(self):
        self.reports: list[gateway_pb2.NodeReport] = []
        self.config: gateway_pb2.ShardConfig | None = None
        self.watchers = 0
        self._changed = asyncio.Event()

    def set_config(self, shard: str, version: str, text: str) -> None:
        self.config = gateway_pb2.ShardConfig(shard=shard, version=version, yaml=text)
        self._changed.set()

    async def Report(self, request, context):
        self.reports.append(request)
        return gateway_pb2.ReportAck(generation=len(self.reports))

    async def WatchConfig(self, request, context):
        self.watchers += 1
        sent = None
        while True:
            if self.config is not None and self.config.version != sent:
                sent = self.config.version
                yield self.config
            self._changed.clear()
            await self._changed.wait()

    @property
    def last(self) -> gateway_pb2.NodeReport | None:
        return self.reports[-1] if self.reports else None


async def serve(gateway: FakeGateway, port: int = 0) -> tuple[grpc.aio.Server, int]:
    server = grpc.aio.server()
    gateway_pb2_grpc.add_GatewayServicer_to_server(gateway, server)
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    return server, bound


async def until(check: Callable[[], object], timeout: float = 5.0, what: str = "") -> None:
    """Poll ``check`` (sync) until truthy; fail with ``what`` at the deadline."""
    await eventually(check, timeout, what=what)
