"""Each node's Envoy stats over the last minutes, and what they say about a window.

Sidecars send their Envoy's selected stats every few seconds (``ReportStats``;
``envoy_proxy.stats`` says which): counters cumulative since that Envoy started, and
latency histograms as cumulative bucket counts. ``StatsBook`` keeps the last
``Limits.stats_samples`` samples of each node. A window's traffic on one node is the
newest sample minus the newest sample at least the window old (or the node's oldest);
a shard's is the sum over its nodes. A node whose Envoy restarted within the window
(a new ``envoy_epoch``) counts from the first sample of its new Envoy, so a restart
never reads as negative traffic.

Everything but ``StatsBook.add`` is pure: a judgement (a migration's promotion step, a
rollout's wave) reads ``ShardWindow`` values and decides; nothing here acts.
"""

from __future__ import annotations

import math
from array import array
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

from dgw_api.v1 import gateway_pb2
from envoy_proxy.stats import RESILIENCE_REASONS, SHED_REQUESTS, Histogram, is_gauge, resilience_of
from xds_server import metrics
from xds_server.settings import Limits


@dataclass(frozen=True)
class StatsSample:
    """One node's reading. Compact, as a fleet keeps thousands: the counter names are
    one tuple shared by a node's samples while they stay the same, the values an array."""

    at: float
    epoch: str
    names: tuple[str, ...]
    values: array[int]
    histograms: Mapping[str, Histogram]

    @property
    def counters(self) -> dict[str, int]:
        return dict(zip(self.names, self.values, strict=True))


def check_stats(stats: gateway_pb2.EnvoyStats, limits: Limits) -> None:
    """Refuse a sample that is too big or malformed (sizes before anything is walked)."""
    size = stats.ByteSize()
    if size > limits.stats_bytes:
        raise ValueError(f"the stats are {size} bytes; at most {limits.stats_bytes} are accepted")
    if len(stats.counters) + len(stats.histograms) > limits.stats_per_sample:
        raise ValueError(f"{len(stats.counters) + len(stats.histograms)} stats in one sample; "
                         f"at most {limits.stats_per_sample} are accepted")  # fmt: skip
    if len(stats.envoy_epoch) > limits.name_chars:
        raise ValueError(f"envoy_epoch is longer than {limits.name_chars} characters")
    for name in (*stats.counters, *(h.name for h in stats.histograms)):
        if not name or len(name) > limits.name_chars or not name.isprintable():
            raise ValueError(f"stat name {name[:80]!r} is empty, longer than {limits.name_chars} "
                             "characters or not printable")  # fmt: skip
    for h in stats.histograms:
        if len(h.bounds) != len(h.counts) or len(h.bounds) > 64:
            raise ValueError(f"histogram {h.name[:80]!r}: bounds and counts must pair up, at most 64")
        if any(b <= a for a, b in zip(h.bounds, h.bounds[1:], strict=False)) or not all(
            math.isfinite(b) for b in h.bounds
        ):
            raise ValueError(f"histogram {h.name[:80]!r}: bounds must be finite and ascending")
        if any(b < a for a, b in zip(h.counts, h.counts[1:], strict=False)):
            raise ValueError(f"histogram {h.name[:80]!r}: cumulative counts must not decrease")


def sample_of(stats: gateway_pb2.EnvoyStats, at: float, names: tuple[str, ...] = ()) -> StatsSample:
    """``names``: the previous sample's names, reused when they are the same."""
    counters = sorted(stats.counters.items())
    fresh = tuple(k for k, _ in counters)
    return StatsSample(
        at=at,
        epoch=stats.envoy_epoch,
        names=names if names == fresh else fresh,
        values=array("q", (min(v, 2**63 - 1) for _, v in counters)),
        histograms={h.name: Histogram(tuple(h.bounds), tuple(h.counts), h.total or (h.counts[-1] if h.counts else 0))
                    for h in stats.histograms},
    )  # fmt: skip


def _minus(newer: Histogram, older: Histogram | None) -> Histogram:
    if older is None or older.bounds != newer.bounds:
        return newer
    return Histogram(
        newer.bounds,
        tuple(max(0, a - b) for a, b in zip(newer.counts, older.counts, strict=True)),
        max(0, newer.total - older.total),
    )


def _plus(a: Histogram | None, b: Histogram) -> Histogram:
    if a is None:
        return b
    if a.bounds != b.bounds:  # nodes of two Envoy builds: keep the larger population
        return a if a.total >= b.total else b
    return Histogram(a.bounds, tuple(x + y for x, y in zip(a.counts, b.counts, strict=True)), a.total + b.total)


def quantile(h: Histogram, q: float) -> float | None:
    """The ``q`` quantile (0-1) in ms, interpolated within its bucket; None without
    samples. Above the last bound it is the last bound (a floor, not a guess)."""
    if h.total <= 0:
        return None
    rank = q * h.total
    lower_bound, lower_count = 0.0, 0
    for bound, count in zip(h.bounds, h.counts, strict=True):
        if count >= rank:
            inside = count - lower_count
            part = (rank - lower_count) / inside if inside else 1.0
            return lower_bound + (bound - lower_bound) * part
        lower_bound, lower_count = bound, count
    return h.bounds[-1] if h.bounds else None


@dataclass(frozen=True)
class Delta:
    """What happened between two samples of one node (or summed over nodes)."""

    seconds: float
    counters: dict[str, int] = field(default_factory=dict)
    histograms: dict[str, Histogram] = field(default_factory=dict)


def delta(newer: StatsSample, older: StatsSample) -> Delta:
    """``newer - older``; another epoch (Envoy restarted) counts from zero. A gauge
    (``envoy_proxy.stats.GAUGES``: hosts ejected now, overload pressure) is its newest value."""
    if newer.epoch != older.epoch:
        return Delta(newer.at - older.at, newer.counters, dict(newer.histograms))
    before = older.counters
    return Delta(
        newer.at - older.at,
        {k: v if is_gauge(k) else max(0, v - before.get(k, 0)) for k, v in newer.counters.items()},
        {k: _minus(h, older.histograms.get(k)) for k, h in newer.histograms.items()},
    )


def node_window(samples: Iterable[StatsSample], seconds: float, now: float) -> Delta | None:
    """The node's traffic over the last ``seconds`` (or over what it has kept); None
    with fewer than two samples or none recent enough to speak for now."""
    kept = list(samples)
    if len(kept) < 2:
        return None
    newest = kept[-1]
    base = kept[0]
    for s in kept:
        if s.at <= newest.at - seconds:
            base = s
    if base is newest:
        return None
    return delta(newest, base)


def add(deltas: Iterable[Delta]) -> Delta:
    counters: dict[str, int] = {}
    histograms: dict[str, Histogram] = {}
    seconds = 0.0
    for d in deltas:
        seconds = max(seconds, d.seconds)
        for k, v in d.counters.items():
            counters[k] = counters.get(k, 0) + v
        for k, h in d.histograms.items():
            histograms[k] = _plus(histograms.get(k), h)
    return Delta(seconds, counters, histograms)


@dataclass(frozen=True)
class TrafficSummary:
    """One cluster's (or listener's) traffic in a window, as people and judgements read it."""

    requests: int
    rps: float
    errors: int  # 5xx answers (upstream's or the listener's own)
    error_rate: float  # errors / requests; 0 without requests
    p50_ms: float | None
    p99_ms: float | None
    counters: dict[str, int]  # every selected counter of it, by its suffix


def summarize(window: Delta, prefix: str, *, total: str, errors: str, latency: str) -> TrafficSummary:
    """The stats under ``prefix`` (``cluster.dal.kv.grpc.``): ``total``, ``errors`` and
    ``latency`` name the suffixes to read (e.g. ``upstream_rq_total``)."""
    counters = {k[len(prefix):]: v for k, v in window.counters.items() if k.startswith(prefix)}
    requests, failed = counters.get(total, 0), counters.get(errors, 0)
    h = window.histograms.get(prefix + latency)
    return TrafficSummary(
        requests=requests,
        rps=requests / window.seconds if window.seconds > 0 else 0.0,
        errors=failed,
        error_rate=failed / requests if requests else 0.0,
        p50_ms=quantile(h, 0.50) if h else None,
        p99_ms=quantile(h, 0.99) if h else None,
        counters=counters,
    )


def cluster_summary(window: Delta, cluster: str) -> TrafficSummary:
    """An Envoy cluster (``dal.DAL.LISTENER``, ``net.DAL.LISTENER``): what it sent upstream.
    A gRPC cluster's errors are its failed calls (``grpc.failure``: any status but OK,
    the gateway's own answers included), as a gRPC error is an HTTP 200; its 5xx when
    that is more (a copy of a request, a shadow's, is not counted by call)."""
    summary = summarize(window, f"cluster.{cluster}.", total="upstream_rq_total",
                        errors="upstream_rq_5xx", latency="upstream_rq_time")  # fmt: skip
    failed = summary.counters.get("grpc.failure", 0)
    if failed <= summary.errors:
        return summary
    requests = max(summary.requests, summary.counters.get("grpc.total", 0))
    return replace(summary, requests=requests, errors=failed, error_rate=failed / requests if requests else 0.0)


def listener_summary(window: Delta, stat_prefix: str) -> TrafficSummary:
    """An HTTP listener (its connection manager's ``stat_prefix``): what clients got."""
    return summarize(window, f"http.{stat_prefix}.", total="downstream_rq_total",
                     errors="downstream_rq_5xx", latency="downstream_rq_time")  # fmt: skip


def resilience(counters: Mapping[str, int]) -> dict[str, dict[str, int]]:
    """What the resilience policies did in a window, from its counters (full names or
    a cluster's or listener's suffixes): ``{shed: {reason: n, ..., requests: n},
    retried: {...}, ejected: {...}}``, every reason present (0 when nothing happened).
    ``shed.requests`` sums the requests refused (not connections)."""
    out = {group: dict.fromkeys(reasons, 0) for group, reasons in RESILIENCE_REASONS.items()}
    for name, value in counters.items():
        what = resilience_of(name)
        if what is not None:
            out[what[0]][what[1]] += value
    out["shed"]["requests"] = sum(out["shed"][r] for r in SHED_REQUESTS)
    return out


def route_summaries(window: Delta, listener: str) -> dict[str, TrafficSummary]:
    """Each route of an HTTP listener (its virtual host is named after it), by route
    name: what it answered (``upstream_rq_completed``; shed by a breaker counts as a 503)."""
    prefix = f"vhost.{listener}.route."
    names = {k[len(prefix):].split(".", 1)[0] for k in (*window.counters, *window.histograms) if k.startswith(prefix)}
    return {name: summarize(window, f"{prefix}{name}.", total="upstream_rq_completed",
                            errors="upstream_rq_5xx", latency="upstream_rq_time")
            for name in sorted(names)}  # fmt: skip


@dataclass
class _Node:
    samples: deque[StatsSample]
    ejected: int = 0  # hosts its Envoy holds ejected, in its newest sample


class StatsBook:
    """The last samples of every node, by shard. Bounded: ``stats_samples`` per node,
    and nodes go when the registry forgets them (``forget``)."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self._nodes: dict[tuple[str, str], _Node] = {}
        self._ejected: dict[str, int] = {}  # by shard

    def add(self, stats: gateway_pb2.EnvoyStats, at: float) -> None:
        """Keep a checked sample (``check_stats`` first). Kept samples are at least
        ``stats_min_interval_s`` apart but for the newest, which a new sample replaces
        until it is that far from the one before: history stays bounded, the newest fresh."""
        key = (stats.shard, stats.node_id)
        node = self._nodes.get(key)
        if node is None:
            node = self._nodes[key] = _Node(deque(maxlen=self.limits.stats_samples))
        sample = sample_of(stats, at, node.samples[-1].names if node.samples else ())
        if node.samples:
            self._count(stats.shard, delta(sample, node.samples[-1]))
        self._set_ejected(key, node, sum(v for k, v in stats.counters.items() if k.endswith(".ejections_active")))
        kept = node.samples
        if len(kept) >= 2 and kept[-1].at - kept[-2].at < self.limits.stats_min_interval_s:
            kept[-1] = sample  # the newest moves on until it is far enough from the one before
        else:
            node.samples.append(sample)

    def _count(self, shard: str, change: Delta) -> None:
        """Add what a node's new sample says the resilience policies did to the server's
        Prometheus counters (a node's first sample counts nothing: its history is not news)."""
        for name, value in change.counters.items():
            what = resilience_of(name)
            if what is not None and value > 0 and not is_gauge(name):
                metrics.RESILIENCE.labels(shard, *what).inc(value)

    def _set_ejected(self, key: tuple[str, str], node: _Node, ejected: int) -> None:
        """Hosts ejected now on the shard: its nodes' newest values, summed as they change."""
        if ejected != node.ejected:
            self._ejected[key[0]] = self._ejected.get(key[0], 0) + ejected - node.ejected
            node.ejected = ejected
            metrics.EJECTED_HOSTS.labels(key[0]).set(self._ejected[key[0]])

    def expire(self, now: float, ttl_s: float) -> None:
        """Forget nodes whose newest sample is older than ``ttl_s``."""
        for key in [k for k, n in self._nodes.items() if not n.samples or n.samples[-1].at < now - ttl_s]:
            self._set_ejected(key, self._nodes[key], 0)
            del self._nodes[key]

    def nodes(self, shard: str) -> dict[str, tuple[StatsSample, ...]]:
        return {n: tuple(s.samples) for (sh, n), s in self._nodes.items() if sh == shard}

    def window(self, shard: str, seconds: float, now: float,
               nodes: Iterable[str] | None = None) -> tuple[Delta, int]:  # fmt: skip
        """The shard's traffic over the last ``seconds`` (of ``nodes``, or all), and how
        many nodes spoke for it. A node silent for longer than the window says nothing."""
        wanted = None if nodes is None else set(nodes)
        deltas = []
        for node_id, samples in self.nodes(shard).items():
            if wanted is not None and node_id not in wanted:
                continue
            if not samples or samples[-1].at < now - max(seconds, self.limits.stats_min_interval_s * 4):
                continue
            d = node_window(samples, seconds, now)
            if d is not None:
                deltas.append(d)
        return add(deltas), len(deltas)
