"""What a rollout does next: a pure function of its state, what its wave's shards
look like now (``observe.ShardView``) and the time. The engine observes, calls
``step``, carries the one action out and records the new state; the same inputs
always give the same action, so every rule here is tested with a fake clock.

A wave, in turn:

1. **Begin**: its shards' traffic of the last ``baseline_s`` is kept as the baseline,
   then its shards are changed (one batch: all of them or none).
2. **Taken**: every node of its shards must run the new config — each Envoy SYNCED
   on it, each sidecar running it with every DAL HEALTHY — within
   ``sync_timeout_s``. Then the bake begins.
3. **Bake**: ``bake_s`` with nothing breaking.
4. **Judge**: each shard's error rate over the bake, per HTTP listener (what clients
   got) and per DAL cluster, no worse than its baseline plus
   ``max_error_rate_increase`` (judged on ``min_requests`` requests or more).

At any time during 2-4 a node that NACKs, a DAL that is UNHEALTHY on the new config
or a build a node refused fails the wave at once. A failed wave is rolled back and
the rollout halts: later waves (the more critical tiers) are never reached. Pausing
holds the next wave back (a wave in flight is still judged, and rolled back if it
fails); aborting rolls the wave in flight back and ends the rollout.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from .model import FINAL, Figure, Rollout, RolloutState, Target, Wave
from .observe import ShardView

# How often a wave in flight is looked at without an event (its nodes' ACKs and
# reports have none the engine waits on).
POLL_S = 0.2
# The least window the bake's traffic is read over (the stats' own resolution).
MIN_WINDOW_S = 2.0


@dataclass(frozen=True)
class Begin:
    wave: int
    baseline: Mapping[str, tuple[Figure, ...]]


@dataclass(frozen=True)
class Taken:
    """Every node runs the wave's config: the bake begins."""

    wave: int


@dataclass(frozen=True)
class Pass:
    wave: int
    verdict: str


@dataclass(frozen=True)
class Fail:
    """Roll the wave back and end the rollout in ``final``."""

    wave: int
    verdict: str
    final: RolloutState


@dataclass(frozen=True)
class Finish:
    state: RolloutState
    outcome: str


@dataclass(frozen=True)
class Wait:
    until: float | None  # None: until something changes (a resume, an abort)
    why: str


Action = Begin | Taken | Pass | Fail | Finish | Wait


def window_s(r: Rollout, now: float) -> float:
    """The traffic window the next step needs: the baseline before a wave begins, the
    bake so far while it bakes."""
    wave = r.current
    if wave is not None and wave.state == "baking" and wave.synced_at is not None:
        return max(MIN_WINDOW_S, now - wave.synced_at)
    return r.options.baseline_s


def shards_to_observe(r: Rollout) -> tuple[str, ...]:
    wave = r.current
    return () if wave is None or r.state in FINAL else wave.shards


def step(r: Rollout, views: Mapping[str, ShardView], now: float) -> Action:
    if r.state in FINAL:
        return Wait(None, f"{r.state}: {r.outcome}")
    wave = r.current
    if wave is None:
        passed = sum(1 for w in r.waves if w.state == "passed")
        return Finish("succeeded", f"{passed} waves passed, {len(r.targets)} shards changed")
    if wave.state == "pending":
        if r.abort_requested:
            return Finish("aborted", f"aborted by {r.abort_requested} before {wave.name}")
        if r.paused:
            return Wait(None, f"paused before {wave.name}")
        # Only figures with traffic: one without is judged against zero all the same.
        return Begin(wave.index, {s: tuple(f for f in views[s].traffic if f.requests)
                                  for s in wave.shards if s in views})  # fmt: skip
    if r.abort_requested:
        return Fail(wave.index, f"{wave.name}: aborted by {r.abort_requested}", "aborted")
    if wave.applied_at is None:
        # Begun but not applied (the server stopped in between): apply it again.
        return Begin(wave.index, wave.baseline)
    broken = _broken(r, wave, views)
    if broken:
        return Fail(wave.index, f"{wave.name} failed: {broken}", "failed")
    if wave.state == "applying":
        lagging = _lagging(r, wave, views)
        if not lagging:
            return Taken(wave.index)
        deadline = wave.applied_at + r.options.sync_timeout_s
        if now >= deadline:
            more = f" (and {len(lagging) - 1} more)" if len(lagging) > 1 else ""
            return Fail(wave.index, f"{wave.name} failed: not taken within "
                                    f"{r.options.sync_timeout_s:g} s: {lagging[0]}{more}", "failed")  # fmt: skip
        return Wait(min(deadline, now + POLL_S), f"{len(lagging)} not there yet: {lagging[0]}")
    assert wave.synced_at is not None  # baking
    end = wave.synced_at + r.options.bake_s
    if now < end:
        return Wait(min(end, now + POLL_S), f"baking until {end:.1f}")
    worse = _worse_traffic(r, wave, views)
    if worse:
        return Fail(wave.index, f"{wave.name} failed: {worse}", "failed")
    return Pass(wave.index, _summary(r, wave, views))


def _owners(t: Target) -> str:
    return f" [owners: {', '.join(t.owners)}]" if t.owners else ""


def _broken(r: Rollout, wave: Wave, views: Mapping[str, ShardView]) -> str:
    """The first thing that fails the wave at once, or ""."""
    for shard in wave.shards:
        t, view = r.targets[shard], views.get(shard)
        if view is None or view.served is None:
            return f"shard {shard} has no config any more{_owners(t)}"
        if t.config_version is not None and view.served != t.config_version:
            return (f"shard {shard} was changed during the wave (it serves config {view.served}, "
                    f"the rollout's is {t.config_version}){_owners(t)}")  # fmt: skip
        for n in view.nodes:
            if n.xds is not None and n.xds.startswith("NACKED"):
                return f"shard {shard} node {n.where}: Envoy {n.xds}{_owners(t)}"
            if n.config_version != t.config_version:
                continue  # still on the old config: the DALs seen are the old ones
            for dal, why in sorted(n.refused.items()):
                return f"shard {shard} node {n.where}: DAL {dal}'s build refused: {why}{_owners(t)}"
            for dal, (health, message) in sorted(n.dals.items()):
                if health == "UNHEALTHY":
                    return (f"shard {shard} node {n.where}: DAL {dal} UNHEALTHY"
                            f"{': ' + message if message else ''}{_owners(t)}")  # fmt: skip
    return ""


def _lagging(r: Rollout, wave: Wave, views: Mapping[str, ShardView]) -> list[str]:
    """Every node not yet running the wave's config with healthy DALs, one line each."""
    lagging: list[str] = []
    for shard in wave.shards:
        t, view = r.targets[shard], views[shard]
        for n in view.nodes:
            where = f"shard {shard} node {n.where}"
            if n.xds is not None and n.xds != "SYNCED":
                lagging.append(f"{where}: Envoy {n.xds}")
            if n.config_version is None:
                continue
            if n.config_version != t.config_version:
                lagging.append(f"{where}: its sidecar runs config {n.config_version}")
                continue
            for dal, (health, message) in sorted(n.dals.items()):
                if health != "HEALTHY":
                    lagging.append(f"{where}: DAL {dal} {health}{': ' + message if message else ''}")
    return lagging


def _worse_traffic(r: Rollout, wave: Wave, views: Mapping[str, ShardView]) -> str:
    o = r.options
    for shard in wave.shards:
        before = {f.name: f for f in wave.baseline.get(shard, ())}
        for f in views[shard].traffic:
            if f.requests < o.min_requests:
                continue
            base = before.get(f.name, Figure(f.name, 0, 0))
            if f.rate > base.rate + o.max_error_rate_increase:
                return (f"shard {shard}: {f.name}: 5xx {100 * f.rate:.1f}% of {f.requests} requests in "
                        f"the bake, {100 * base.rate:.1f}% of {base.requests} before (at most "
                        f"+{100 * o.max_error_rate_increase:.1f} points){_owners(r.targets[shard])}")  # fmt: skip
    return ""


def _summary(r: Rollout, wave: Wave, views: Mapping[str, ShardView]) -> str:
    nodes = sum(len(views[s].nodes) for s in wave.shards)
    worst: tuple[float, str] = (0.0, "")
    requests = 0
    for s in wave.shards:
        for f in views[s].traffic:
            if f.name.startswith("listener "):
                requests += f.requests
            if f.requests >= r.options.min_requests and f.rate >= worst[0]:
                worst = (f.rate, f"{f.name} of {s}")
    errors = f"worst 5xx {100 * worst[0]:.1f}% ({worst[1]})" if worst[1] else "too few requests to judge errors"
    return (f"{wave.name} passed: {len(wave.shards)} shards, {nodes} nodes took it; "
            f"{requests} requests in the bake, {errors}")
