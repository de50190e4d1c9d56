"""The server's book of Envoy stats (pure): windows over samples, restarts, quantiles,
bounds; and the sidecar's selection of what it reports."""

from __future__ import annotations

import itertools

import pytest

from dgw_api.v1 import gateway_pb2
from envoy_proxy.stats import REPORTED, Histogram, parse_sample
from xds_server import metrics
from xds_server.node_stats import (
    StatsBook,
    check_stats,
    cluster_summary,
    quantile,
    resilience,
    route_summaries,
)
from xds_server.settings import Limits

BOUNDS = (1.0, 2.0, 5.0, 10.0)
C = "cluster.dal.kv.grpc."


def stats(node: str = "n1", epoch: str = "e1", total: int = 0, errors: int = 0,
          buckets: tuple[int, ...] = (0, 0, 0, 0)) -> gateway_pb2.EnvoyStats:  # fmt: skip
    return gateway_pb2.EnvoyStats(
        shard="s", node_id=node, envoy_epoch=epoch,
        counters={C + "upstream_rq_total": total, C + "upstream_rq_5xx": errors},
        histograms=[gateway_pb2.Histogram(name=C + "upstream_rq_time", bounds=BOUNDS, counts=buckets)],
    )  # fmt: skip


def book(**limits: float) -> StatsBook:
    return StatsBook(Limits(stats_min_interval_s=limits.get("min_interval", 5.0),
                            stats_samples=int(limits.get("samples", 24))))  # fmt: skip


def test_a_window_is_the_newest_sample_minus_the_one_at_its_start() -> None:
    b = book()
    b.add(stats(total=100, errors=1, buckets=(50, 90, 100, 100)), at=0)
    b.add(stats(total=150, errors=1, buckets=(50, 90, 100, 100)), at=10)
    b.add(stats(total=250, errors=11, buckets=(60, 100, 190, 200)), at=20)
    window, nodes = b.window("s", 10, now=20)
    summary = cluster_summary(window, "dal.kv.grpc")
    assert nodes == 1 and window.seconds == 10
    assert (summary.requests, summary.errors, summary.rps) == (100, 10, 10.0)
    assert summary.error_rate == pytest.approx(0.1)
    # 100 requests in the window: 10 ≤ 1 ms, none in 1-2 ms, 80 in 2-5 ms, 10 in 5-10 ms.
    assert summary.p50_ms == pytest.approx(2 + 3 * (50 - 10) / 80)
    assert summary.p99_ms == pytest.approx(5 + 5 * (99 - 90) / 10)
    whole, _ = b.window("s", 60, now=20)  # longer than kept: from the oldest sample
    assert cluster_summary(whole, "dal.kv.grpc").requests == 150


def test_a_restarted_envoy_counts_from_its_first_sample_never_negative() -> None:
    b = book()
    b.add(stats(epoch="a", total=1000), at=0)
    b.add(stats(epoch="b", total=7), at=10)  # Envoy restarted: its counters began again
    window, _ = b.window("s", 10, now=10)
    assert cluster_summary(window, "dal.kv.grpc").requests == 7


def test_nodes_add_up_and_a_silent_node_says_nothing() -> None:
    b = book()
    for node, per_s in (("n1", 10), ("n2", 30), ("gone", 1000)):
        last = 0.0 if node == "gone" else 30.0
        b.add(stats(node, total=0), at=last - 10)
        b.add(stats(node, total=per_s * 10), at=last)
    window, nodes = b.window("s", 10, now=30)
    assert nodes == 2 and cluster_summary(window, "dal.kv.grpc").requests == 400
    one, _ = b.window("s", 10, now=30, nodes=["n2"])
    assert cluster_summary(one, "dal.kv.grpc").requests == 300


def test_samples_closer_than_the_interval_replace_the_newest_and_history_is_bounded() -> None:
    b = book(min_interval=5, samples=3)
    for at in range(0, 100):  # one a second for 100 s
        b.add(stats(total=at), at=float(at))
    kept = b.nodes("s")["n1"]
    assert len(kept) == 3 and kept[-1].at == 99  # the newest is always the latest
    assert all(b2.at - b1.at >= 5 for b1, b2 in itertools.pairwise(kept[:-1]))
    b.expire(now=99 + 121, ttl_s=120)
    assert b.nodes("s") == {}


def test_quantiles_interpolate_within_a_bucket_and_stop_at_the_last_bound() -> None:
    h = Histogram(BOUNDS, (0, 0, 100, 100), 100)
    assert quantile(h, 0.5) == pytest.approx(3.5)
    assert quantile(Histogram(BOUNDS, (0, 0, 0, 0), 0), 0.99) is None
    assert quantile(Histogram(BOUNDS, (0, 0, 0, 10), 20), 0.99) == 10.0


@pytest.mark.parametrize(("bad", "says"), [
    (lambda s: s.histograms[0].bounds.append(20.0), "pair up"),
    (lambda s: s.histograms[0].counts.__setitem__(0, 9), "must not decrease"),
    (lambda s: s.counters.__setitem__("x\n", 1), "not printable"),
    (lambda s: s.counters.update({f"c{i}": i for i in range(3000)}), "at most 2048"),
])  # fmt: skip
def test_a_malformed_or_huge_sample_is_refused(bad, says: str) -> None:
    s = stats(buckets=(1, 2, 3, 4))
    bad(s)
    with pytest.raises(ValueError, match=says):
        check_stats(s, Limits())


def test_the_sidecar_reports_clusters_listeners_and_shedding_not_envoys_own() -> None:
    data = {"stats": [
        {"name": "cluster.dal.kv.v1.grpc.upstream_rq_total", "value": 5},
        {"name": "cluster.dal.kv.grpc.outlier_detection.ejections_active", "value": 1},
        {"name": "cluster.dal.kv.grpc.upstream_cx_active", "value": 3},
        {"name": "cluster.dgw_xds.upstream_rq_total", "value": 9},
        {"name": "http.secure_grpc.downstream_rq_5xx", "value": 2},
        {"name": "http.admin.downstream_rq_total", "value": 7},
        {"name": "http_local_rate_limiter.http_local_rate_limit.rate_limited", "value": 4},
        {"name": "cluster.dal.kv.grpc.version_text", "value": "abc"},
        {"histograms": [
            {"name": "cluster.dal.kv.grpc.upstream_rq_time",
             "buckets": [{"upper_bound": 1, "cumulative": 2}, {"upper_bound": 5, "cumulative": 3}]},
            {"name": "cluster.dal.kv.grpc.external.upstream_rq_time", "buckets": []},
            {"name": "http.admin.downstream_rq_time", "buckets": []},
        ]},
    ]}  # fmt: skip
    sample = parse_sample(data)
    assert sample.counters == {
        "cluster.dal.kv.v1.grpc.upstream_rq_total": 5,
        "cluster.dal.kv.grpc.outlier_detection.ejections_active": 1,
        "http.secure_grpc.downstream_rq_5xx": 2,
        "http_local_rate_limiter.http_local_rate_limit.rate_limited": 4,
    }
    assert sample.histograms == {"cluster.dal.kv.grpc.upstream_rq_time": Histogram((1.0, 5.0), (2, 3), 3)}
    assert REPORTED.match("overload.envoy.resource_monitors.fixed_heap.pressure")


R = "cluster.dal.kv.grpc."


def policy_stats(at_retry: int, shed: int, ejected_now: int, node: str = "n1") -> gateway_pb2.EnvoyStats:
    return gateway_pb2.EnvoyStats(shard="res", node_id=node, envoy_epoch="e", counters={
        R + "upstream_rq_retry": at_retry, R + "upstream_rq_retry_success": at_retry // 2,
        R + "upstream_rq_retry_overflow": shed, R + "upstream_rq_pending_overflow": shed,
        R + "outlier_detection.ejections_enforced_total": ejected_now * 3,
        R + "outlier_detection.ejections_active": ejected_now,
        "secure_grpc.http_local_rate_limit.enforced": shed * 10,
        "http.secure_grpc.adaptive_concurrency.gradient_controller.rq_blocked": shed,
        "http.secure_grpc.downstream_rq_overload_close": 1,
    })  # fmt: skip


def test_what_the_policies_did_is_read_by_reason_and_a_gauge_is_its_newest_value() -> None:
    b = book()
    b.add(policy_stats(at_retry=10, shed=1, ejected_now=2), at=0)
    b.add(policy_stats(at_retry=30, shed=5, ejected_now=1), at=10)
    window, _ = b.window("res", 10, now=10)
    r = resilience(window.counters)
    assert r["retried"] == {"retries": 20, "succeeded": 10, "per_try_timeouts": 0, "refused_by_budget": 4,
                            "attempts_exhausted": 0, "backoff_ratelimited": 0}  # fmt: skip
    assert r["ejected"]["ejections"] == 0  # 6 → 3 (made up): a counter never reads as negative
    assert r["ejected"]["ejected_now"] == 1, "a gauge is the newest value, not a difference"
    assert r["shed"] == {"rate_limit": 40, "circuit_breaker": 4, "adaptive_concurrency": 4,
                         "admission_control": 0, "overload_manager": 0, "connection_limit": 0,
                         "requests": 48}  # fmt: skip
    per_cluster = resilience(cluster_summary(window, "dal.kv.grpc").counters)
    assert per_cluster["shed"]["requests"] == 4 and per_cluster["retried"]["retries"] == 20


def _metric(name: str, **labels: str) -> float:
    value = metrics.REGISTRY.get_sample_value(name, labels)
    return value or 0.0


def test_the_policies_counts_reach_prometheus_per_shard_and_reason() -> None:
    b = book(min_interval=0)
    labels = {"shard": "res", "group": "shed", "reason": "rate_limit"}
    before = _metric("dgw_resilience_events_total", **labels)
    b.add(policy_stats(at_retry=0, shed=100, ejected_now=1, node="p1"), at=0)  # history: not counted
    b.add(policy_stats(at_retry=0, shed=103, ejected_now=1, node="p1"), at=1)
    b.add(policy_stats(at_retry=0, shed=0, ejected_now=2, node="p2"), at=1)
    assert _metric("dgw_resilience_events_total", **labels) - before == 30
    assert _metric("dgw_ejected_hosts", shard="res") == 3
    b.expire(now=1000, ttl_s=10)
    assert _metric("dgw_ejected_hosts", shard="res") == 0


def test_routes_are_reported_and_summed_by_method_class_and_priority() -> None:
    data = {"stats": [
        {"name": "vhost.api.route.reads_low_asked.upstream_rq_completed", "value": 21},
        {"name": "vhost.api.route.reads_low_asked.upstream_rq_5xx", "value": 19},
        {"name": "vhost.api.route.reads.upstream_rq_retry", "value": 2},
        {"name": "vhost.api.vcluster.other.upstream_rq_total", "value": 5},
    ]}  # fmt: skip
    sample = parse_sample(data)
    assert set(sample.counters) == {"vhost.api.route.reads_low_asked.upstream_rq_completed",
                                    "vhost.api.route.reads_low_asked.upstream_rq_5xx",
                                    "vhost.api.route.reads.upstream_rq_retry"}  # fmt: skip
    b = book()
    b.add(gateway_pb2.EnvoyStats(shard="r", node_id="n", envoy_epoch="e"), at=0)
    b.add(gateway_pb2.EnvoyStats(shard="r", node_id="n", envoy_epoch="e", counters=sample.counters), at=10)
    window, _ = b.window("r", 10, now=10)
    routes = route_summaries(window, "api")
    assert set(routes) == {"reads", "reads_low_asked"}
    low = routes["reads_low_asked"]
    assert (low.requests, low.errors) == (21, 19)
    assert resilience(routes["reads"].counters)["retried"]["retries"] == 2
