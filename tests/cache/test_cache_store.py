"""The cache: who is woken by which change, per-node endpoints, status, no leaks."""

from __future__ import annotations

from collections import Counter

from tests.ads.ads_samples import basic, cla
from xds_server.cache import SnapshotCache
from xds_server.resources import CLUSTER, ENDPOINT


def watchers(cache: SnapshotCache, *keys: tuple[str, str]) -> Counter[tuple[str, str]]:
    woken: Counter[tuple[str, str]] = Counter()
    for shard, node in keys:
        cache.connect(shard, node, "sotw", lambda k=(shard, node): woken.update([k]))
    return woken


def port_of(cache: SnapshotCache, shard: str, node: str, name: str) -> int:
    from envoy.config.endpoint.v3.endpoint_pb2 import ClusterLoadAssignment
    from google.protobuf.any_pb2 import Any

    view = cache.view(shard, node)
    assert view is not None
    value = Any.FromString(view[ENDPOINT].resources[name].any).value
    assignment = ClusterLoadAssignment.FromString(value)
    return assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address.port_value


def test_a_change_wakes_only_its_shard() -> None:
    cache = SnapshotCache()
    woken = watchers(cache, ("a", "n1"), ("a", "n2"), ("b", "n3"))
    assert cache.set_shard("a", basic())
    assert woken == {("a", "n1"): 1, ("a", "n2"): 1}
    assert cache.set_shard("a", basic()) is False  # same content: nobody is woken
    assert woken == {("a", "n1"): 1, ("a", "n2"): 1}
    assert cache.set_shard("b", basic())
    assert woken[("b", "n3")] == 1 and woken[("a", "n1")] == 1


def test_node_endpoints_overlay_the_default_and_wake_only_that_node() -> None:
    cache = SnapshotCache()
    cache.set_shard("a", basic())
    woken = watchers(cache, ("a", "n1"), ("a", "n2"))
    assert cache.set_node_endpoints("a", "n1", {"c1": cla("c1", 7001), "extra": cla("extra", 1)})
    assert woken == {("a", "n1"): 1}
    assert port_of(cache, "a", "n1", "c1") == 7001
    assert port_of(cache, "a", "n1", "c2") == 9002  # no entry of its own: the default
    assert port_of(cache, "a", "n2", "c1") == 9001
    own = cache.view("a", "n1")
    assert own is not None and own[CLUSTER] is cache.view("a", "n2")[CLUSTER]  # type: ignore[index]
    assert cache.view("a", "n1") is own  # built once per shard snapshot

    assert cache.set_node_endpoints("a", "n1", {"c1": cla("c1", 7001), "extra": cla("extra", 1)}) is False
    cache.set_shard("a", basic(clusters={"c1": 5, "c2": 1000}))  # EDS unchanged
    again = cache.view("a", "n1")
    assert again is not own and again[ENDPOINT] is own[ENDPOINT]  # merged EDS reused

    assert cache.set_node_endpoints("a", "n1", None)
    assert port_of(cache, "a", "n1", "c1") == 9001
    assert cache.set_node_endpoints("a", "n1", None) is False
    assert cache.stats().endpoint_overrides == 0


def test_node_endpoints_wait_for_the_shard_and_go_with_it() -> None:
    cache = SnapshotCache()
    assert cache.set_node_endpoints("a", "n1", {"c1": cla("c1", 7001)})
    assert cache.view("a", "n1") is None
    cache.set_shard("a", basic())
    assert port_of(cache, "a", "n1", "c1") == 7001
    woken = watchers(cache, ("a", "n1"))
    cache.remove_shard("a")
    assert cache.view("a", "n1") is None and cache.shard_versions("a") == {}
    assert woken == {}  # connected nodes keep what they have
    assert cache.stats().endpoint_overrides == 0 and cache.stats().shards == 0


def test_shard_versions() -> None:
    cache = SnapshotCache()
    assert cache.shard_versions("a") == {}
    cache.set_shard("a", basic())
    versions = cache.shard_versions("a")
    assert versions[CLUSTER] == cache.view("a", "x")[CLUSTER].version  # type: ignore[index]
    assert len(versions) == 5


def test_node_status_follows_stream_lifetime_and_nothing_leaks() -> None:
    cache = SnapshotCache()
    watches = [cache.connect("a", f"n{i}", "delta", lambda: None) for i in range(100)]
    twin = cache.connect("a", "n0", "sotw", lambda: None)  # a node reconnecting
    watches[0].status.record_sent(CLUSTER, "v1")
    watches[0].status.record_nack(CLUSTER, "v1", "bad")
    status = {(s.node_id, s.stream): s for s in cache.node_status()}
    assert len(status) == 101
    n0 = status[("n0", "delta")].types[CLUSTER]
    assert n0.sent_version == "v1" and n0.acked_version is None
    assert n0.last_nack is not None and n0.last_nack.message == "bad"
    assert cache.stats().watched_nodes == 100 and cache.stats().streams == 101

    for w in [*watches, twin]:
        cache.disconnect(w)
    cache.disconnect(twin)  # twice is harmless
    assert cache.node_status() == []
    stats = cache.stats()
    assert (stats.watched_nodes, stats.streams) == (0, 0)
    assert cache._watches == {}  # no empty per-shard or per-node tables left behind
