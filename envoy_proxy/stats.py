"""Which of Envoy's stats a gateway host reports, and how its latency histograms are cut.

The sidecar samples its Envoy's admin ``/stats`` every few seconds and sends what
``REPORTED`` selects to the xds_server (``dgw.v1.Gateway/ReportStats``), which keeps a
short history per node and answers "what did this cluster do in the last 30 s" for
operators (``dgw stats``) and for automatic judgements (a migration's promotion step,
a rollout's wave). The selection is one regular expression, kept here so that the
gateway's bootstrap (histogram buckets) and the sampler agree.

Latency: Envoy's default histogram buckets jump from 1 to 5 to 10 ms, too coarse to
compare two DALs' p99 of a few milliseconds; ``LATENCY_BUCKETS_MS`` is finer where
data services live (0.25 ms … 60 s), so a quantile read from bucket counts is within a
bucket's width of the truth.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from typing import Any

LATENCY_BUCKETS_MS: tuple[float, ...] = (
    0.25, 0.5, 0.75, 1, 1.5, 2, 3, 4, 5, 6, 8, 10, 12.5, 15, 20, 25, 30, 40, 50, 75,
    100, 150, 200, 300, 500, 750, 1000, 2000, 5000, 10000, 30000, 60000,
)  # fmt: skip

# How often Envoy merges its histograms (what ``cumulative`` bucket counts reflect).
STATS_FLUSH_INTERVAL_S = 1.0

# Counters of every cluster (a DAL's listener) and of every HTTP listener, the
# latency histograms of both, and what the resilience policies count (retries,
# timeouts, overflows, ejections, shed requests).
_CLUSTER = (
    r"upstream_rq_(total|[2345]xx|retry|retry_success|retry_overflow|retry_limit_exceeded"
    r"|retry_backoff_(exponential|ratelimited)|timeout|per_try_timeout|pending_overflow|rx_reset|tx_reset)"
    r"|upstream_cx_(overflow|connect_fail)|upstream_rq_time"
    r"|outlier_detection\.ejections_(active|enforced_total|enforced_consecutive_5xx"
    r"|enforced_consecutive_gateway_failure|overflow)"
    r"|grpc\.(success|failure|total)"  # gRPC calls by outcome (their HTTP status is 200)
)
_LISTENER = r"downstream_rq_(total|[2345]xx|time|overload_close)|downstream_cx_overflow"
# Each route (a method class and priority: ``reads``, ``writes_low``, ...; its name is its
# stat prefix): what it answered (a request shed by a breaker is a 503 there) and retried.
_ROUTE = (
    r"upstream_rq_(completed|[2345]xx|retry|retry_success|retry_overflow|retry_limit_exceeded"
    r"|timeout|per_try_timeout|time)"
)
# Envoy's filter (RE2: no look-ahead) narrows what admin sends; REPORTED decides.
ENVOY_FILTER = (
    r"^(cluster\.(dal|net)\.|http\.|overload\.|vhost\.)|local_rate_limit|adaptive_concurrency|admission_control"
    r"|^listener\..*downstream_cx_overflow$"
)
REPORTED = re.compile(
    # Envoy's per-zone and per-origin copies of a cluster's stats, and its admin
    # listener's, are left out.
    r"^(?!.*\.(external|internal|canary)\.)(?!http\.admin\.)"
    rf"(cluster\.(dal|net)\..+\.({_CLUSTER})"
    rf"|http\..+\.({_LISTENER})"
    rf"|vhost\.[^.]+\.route\.[^.]+\.({_ROUTE})"
    r"|.*(local_rate_limit|adaptive_concurrency|admission_control)\..*"
    r"|overload\..*"
    r"|listener\..+\.downstream_cx_overflow)$"
)


@dataclass(frozen=True)
class Histogram:
    """Cumulative counts at each upper bound (ms), and the count of every sample."""

    bounds: tuple[float, ...]
    counts: tuple[int, ...]
    total: int


@dataclass(frozen=True)
class Sample:
    """One reading of the selected stats."""

    counters: dict[str, int] = field(default_factory=dict)
    histograms: dict[str, Histogram] = field(default_factory=dict)


def parse_sample(data: dict[str, Any], selected: re.Pattern[str] = REPORTED) -> Sample:
    """``/stats?format=json&histogram_buckets=cumulative`` → the selected counters,
    gauges and histograms. Text readouts are left out. A histogram's total is its last
    bucket's count (a request above 60 s is not a latency to judge by)."""
    counters: dict[str, int] = {}
    histograms: dict[str, Histogram] = {}
    for item in data.get("stats", []):
        if "histograms" in item:
            entries = item["histograms"]
            for h in entries if isinstance(entries, list) else ():
                name = h.get("name", "")
                if not selected.match(name):
                    continue
                buckets = h.get("buckets") or []
                bounds = tuple(float(b["upper_bound"]) for b in buckets)
                counts = tuple(int(b.get("cumulative") or 0) for b in buckets)
                histograms[name] = Histogram(bounds, counts, counts[-1] if counts else 0)
            continue
        name, value = item.get("name"), item.get("value")
        if isinstance(name, str) and isinstance(value, int) and selected.match(name):
            counters[name] = value
    return Sample(counters, histograms)


# What the resilience policies did, read from Envoy's stat names by their suffix:
# the group (``shed``: requests refused to protect the DAL; ``retried``: retries and
# hedges and what limited them; ``ejected``: outlier detection) and the reason.
RESILIENCE: dict[str, tuple[str, str]] = {
    # shed: answered at once (503 / RESOURCE_EXHAUSTED / UNAVAILABLE) instead of queued
    "http_local_rate_limit.enforced": ("shed", "rate_limit"),
    "upstream_rq_pending_overflow": ("shed", "circuit_breaker"),  # pending or request limit
    "adaptive_concurrency.gradient_controller.rq_blocked": ("shed", "adaptive_concurrency"),
    "admission_control.rq_rejected": ("shed", "admission_control"),
    "downstream_rq_overload_close": ("shed", "overload_manager"),
    # retried: every retry (a hedge is one), the ones that won, the ones refused
    "upstream_rq_retry": ("retried", "retries"),
    "upstream_rq_retry_success": ("retried", "succeeded"),
    "upstream_rq_per_try_timeout": ("retried", "per_try_timeouts"),
    "upstream_rq_retry_overflow": ("retried", "refused_by_budget"),  # budget or retry breaker
    "upstream_rq_retry_limit_exceeded": ("retried", "attempts_exhausted"),
    "upstream_rq_retry_backoff_ratelimited": ("retried", "backoff_ratelimited"),
    # ejected: outlier detection
    "outlier_detection.ejections_enforced_total": ("ejected", "ejections"),
    "outlier_detection.ejections_active": ("ejected", "ejected_now"),
    "outlier_detection.ejections_overflow": ("ejected", "kept_by_max_share"),
    "upstream_cx_overflow": ("shed", "connection_limit"),  # connections refused by the breaker
}
RESILIENCE_REASONS: dict[str, tuple[str, ...]] = {
    group: tuple(r for g, r in RESILIENCE.values() if g == group) for group in ("shed", "retried", "ejected")
}
# Requests a client saw refused (``connection_limit`` counts connections, not requests).
SHED_REQUESTS = ("rate_limit", "circuit_breaker", "adaptive_concurrency", "admission_control", "overload_manager")
# Values that are levels, not running totals: a window reads the newest, not a difference.
GAUGES = re.compile(r"(\.ejections_active|\.active|\.pressure|\.scale_percent|\.concurrency_limit"
                    r"|\.min_rtt_msecs|\.sample_rtt_msecs|\.burst_queue_size)$")  # fmt: skip


@functools.lru_cache(maxsize=4096)
def resilience_of(name: str) -> tuple[str, str] | None:
    """``(group, reason)`` of a reported stat the resilience policies count, else None.
    A route's stats (``vhost.``) repeat its cluster's, by method class: a breakdown,
    never added to a shard's totals (a route's own counters, read by suffix, still are)."""
    if name.startswith("vhost."):
        return None
    for suffix, what in RESILIENCE.items():
        if name == suffix or name.endswith("." + suffix):
            return what
    return None


@functools.lru_cache(maxsize=4096)
def is_gauge(name: str) -> bool:
    return GAUGES.search(name) is not None
