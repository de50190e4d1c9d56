"""Snapshots: content-hash versions, marshal once, sharing what did not change."""

from __future__ import annotations

import pytest
from envoy.config.cluster.v3.cluster_pb2 import Cluster
from envoy.service.discovery.v3.discovery_pb2 import Resource
from google.protobuf.any_pb2 import Any
from google.protobuf.struct_pb2 import Struct

from tests.ads.ads_samples import basic, cluster
from xds_server.cache import EMPTY_VERSION, build_snapshot, content_version, set_version
from xds_server.cache.encoding import encode_any, encode_resource, varint
from xds_server.resources import CLUSTER, ENDPOINT, LISTENER, PUSH_ORDER, ROUTE, SECRET, Resources


def test_versions_are_content_hashes() -> None:
    a, b = build_snapshot(basic()), build_snapshot(basic())
    assert a.versions() == b.versions()  # another process computes the same versions
    changed = build_snapshot(basic(clusters={"c1": 2000, "c2": 1000}))
    assert changed[CLUSTER].version != a[CLUSTER].version
    assert changed[CLUSTER].resources["c2"].version == a[CLUSTER].resources["c2"].version
    for t in (ENDPOINT, LISTENER, ROUTE, SECRET):
        assert changed[t].version == a[t].version


def test_set_version_covers_names_and_ignores_order() -> None:
    assert set_version([("a", "1"), ("b", "2")]) == set_version([("b", "2"), ("a", "1")])
    assert set_version([("a", "1")]) != set_version([("b", "1")])
    assert set_version([]) == EMPTY_VERSION
    assert content_version(b"x") == content_version(b"x") != content_version(b"y")


def test_serialization_is_deterministic_for_maps() -> None:
    def with_metadata(keys: list[str]) -> Cluster:
        c = cluster("c1")
        for k in keys:
            c.metadata.filter_metadata[k].CopyFrom(Struct(fields={}))
            c.metadata.filter_metadata[k]["v"] = k
        return c

    one = build_snapshot(Resources({CLUSTER: {"c1": with_metadata(["a", "b", "c"])}}))
    two = build_snapshot(Resources({CLUSTER: {"c1": with_metadata(["c", "b", "a"])}}))
    assert one[CLUSTER].version == two[CLUSTER].version


def test_unchanged_resources_and_types_are_shared_not_rebuilt() -> None:
    first = build_snapshot(basic())
    second = build_snapshot(basic(clusters={"c1": 2000, "c2": 1000}), first)
    for t in (ENDPOINT, LISTENER, ROUTE, SECRET):
        assert second[t] is first[t]  # memoized response bodies survive
    assert second[CLUSTER] is not first[CLUSTER]
    assert second[CLUSTER].resources["c2"] is first[CLUSTER].resources["c2"]


def test_every_type_is_present_even_when_empty() -> None:
    snapshot = build_snapshot(Resources({}))
    assert list(snapshot.versions()) == list(PUSH_ORDER)
    assert all(snapshot[t].version == EMPTY_VERSION for t in PUSH_ORDER)


def test_bad_resources_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown resource type"):
        build_snapshot(Resources({"type.googleapis.com/x.Y": {}}))
    with pytest.raises(TypeError, match="expected Cluster"):
        build_snapshot(Resources({CLUSTER: {"c1": Struct()}}))


def test_envelopes_are_valid_protobuf() -> None:
    c = cluster("c1")
    value = c.SerializeToString(deterministic=True)
    any_bytes = encode_any(CLUSTER, value)
    assert Any.FromString(any_bytes) == Any(type_url=CLUSTER, value=value)
    parsed = Resource.FromString(encode_resource("c1", "v1", any_bytes))
    assert (parsed.name, parsed.version, parsed.resource.value) == ("c1", "v1", value)
    encoded = build_snapshot(Resources({CLUSTER: {"c1": c}}))[CLUSTER].resources["c1"]
    assert Any.FromString(encoded.any).value == value
    assert Resource.FromString(encoded.resource).version == encoded.version


@pytest.mark.parametrize("n", [0, 1, 127, 128, 300, 16383, 16384, 2**31, 2**63 - 1])
def test_varint_matches_protobuf(n: int) -> None:
    from google.protobuf.internal.encoder import _VarintBytes

    assert varint(n) == _VarintBytes(n)
