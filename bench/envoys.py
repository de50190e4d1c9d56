"""Real Envoys in benchmarks: started with the project's launcher (``envoy_proxy``),
and what each has applied.

Envoy's own stats say which version of each xDS subscription it holds
(``*.version_text``) and when it last applied an update (``*.update_time``, ms since
the epoch, refreshed by every accepted response). Envoy ACKs right after applying,
so the newest ``update_time`` is when it ACKed the edit, on this host's clock.
"""

from __future__ import annotations

import time
from pathlib import Path

from bench.procs import BenchError, wait_for
from envoy_proxy import BlockingEnvoy, EnvoyError, make_bootstrap
from xds_server.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE

_SUBSCRIPTION_STATS = "(version_text|update_time)$"


def start_envoys(
    nodes: list[tuple[str, str]], xds: str, workdir: Path, delta: bool = False, timeout: float = 30.0
) -> list[BlockingEnvoy]:
    """One Envoy per ``(shard, node_id)`` talking ADS to ``xds``, all ready (started
    together, then waited on); BenchError if any is not."""
    envoys: list[BlockingEnvoy] = []
    try:
        for shard, node_id in nodes:
            config = make_bootstrap(shard, node_id, xds, delta)
            envoys.append(BlockingEnvoy(config, workdir, name=f"envoy-{node_id}", concurrency=1))
        deadline = time.monotonic() + timeout
        for envoy in envoys:
            envoy.wait_ready(max(1.0, deadline - time.monotonic()))
    except EnvoyError as e:
        stop_envoys(envoys)
        raise BenchError(str(e)) from None
    except BaseException:
        stop_envoys(envoys)
        raise
    return envoys


def stop_envoys(envoys: list[BlockingEnvoy]) -> None:
    for envoy in envoys:
        envoy.stop()


def subscriptions(envoy: BlockingEnvoy) -> dict[str, tuple[str, str, int]]:
    """Every xDS subscription: stat prefix → (type URL, version_text, update_time ms)."""
    stats = envoy.stats(_SUBSCRIPTION_STATS)
    found: dict[str, tuple[str, str, int]] = {}
    for name, version in stats.texts.items():
        prefix = name.removesuffix(".version_text")
        type_url = _type_of(prefix)
        if name.endswith(".version_text") and type_url:
            found[prefix] = (type_url, version, stats.number(f"{prefix}.update_time"))
    return found


def applied(envoy: BlockingEnvoy, targets: dict[str, str]) -> float | None:
    """When Envoy applied ``targets`` (type URL → version) for every subscription,
    as epoch seconds (its newest update), or None while any differs."""
    subs = subscriptions(envoy)
    seen = {t for t, _, _ in subs.values()}
    if any(t not in seen for t in targets):
        return None
    for type_url, version, _ in subs.values():
        if type_url in targets and version != targets[type_url]:
            return None
    return max(at for _, _, at in subs.values()) / 1000.0


def wait_applied(envoy: BlockingEnvoy, targets: dict[str, str], timeout: float) -> float:
    def check() -> float | None:
        if not envoy.alive():
            raise BenchError(f"envoy {envoy.node_id} {envoy.process.exit_text()}; log "
                             f"{envoy.process.log_path}:\n{envoy.process.log_tail()}")  # fmt: skip
        return applied(envoy, targets)

    took = wait_for(check, timeout, f"envoy {envoy.node_id} to apply {targets}", interval=0.01)
    assert took is not None  # wait_for returns only a truthy result
    return took


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
