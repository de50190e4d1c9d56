"""Responses assembled from pre-encoded bytes parse as the real protobuf messages."""

from __future__ import annotations

from envoy.service.discovery.v3.discovery_pb2 import (
    DeltaDiscoveryResponse,
    DiscoveryResponse,
    Resource,
)
from google.protobuf.any_pb2 import Any

from tests.ads.ads_samples import basic
from xds_server.ads import wire
from xds_server.cache import build_snapshot, set_version
from xds_server.resources import CLUSTER, ENDPOINT


def test_field_numbers_are_the_descriptors() -> None:
    # discovery.proto, as the generated descriptors say; wire.py reads them from there.
    fields = {f.name: f.number for f in DiscoveryResponse.DESCRIPTOR.fields}
    assert (fields["version_info"], fields["resources"], fields["type_url"], fields["nonce"]) == (1, 2, 4, 5)
    delta = {f.name: f.number for f in DeltaDiscoveryResponse.DESCRIPTOR.fields}
    assert (
        delta["system_version_info"], delta["resources"], delta["type_url"],
        delta["nonce"], delta["removed_resources"],
    ) == (1, 2, 4, 5, 6)  # fmt: skip
    resource = {f.name: f.number for f in Resource.DESCRIPTOR.fields}
    assert (resource["name"], resource["version"], resource["resource"]) == (3, 1, 2)


def test_sotw_response_is_a_discovery_response() -> None:
    snapshot = build_snapshot(basic())
    body = wire.sotw_body(snapshot[CLUSTER], None)
    parsed = DiscoveryResponse.FromString(wire.sotw_response(body, "42"))
    expected = DiscoveryResponse(
        version_info=snapshot[CLUSTER].version, type_url=CLUSTER, nonce="42"
    )
    for name in ("c1", "c2"):
        expected.resources.append(Any.FromString(snapshot[CLUSTER].resources[name].any))
    assert parsed == expected
    assert body.count == 2


def test_sotw_body_is_built_once_per_name_set_and_versioned_by_its_content() -> None:
    snapshot = build_snapshot(basic())[ENDPOINT]
    names = frozenset({"c1", "missing"})
    body = wire.sotw_body(snapshot, names)
    assert wire.sotw_body(snapshot, frozenset({"missing", "c1"})) is body
    assert body.count == 1
    assert body.version == set_version([("c1", snapshot.resources["c1"].version)])
    assert wire.sotw_body(snapshot, None).version == snapshot.version


def test_delta_response_is_a_delta_discovery_response() -> None:
    snapshot = build_snapshot(basic())[CLUSTER]
    parsed = DeltaDiscoveryResponse.FromString(
        wire.delta_response(snapshot, ["c2"], ["gone1", "gone2"], "7")
    )
    c2 = snapshot.resources["c2"]
    assert parsed.system_version_info == snapshot.version
    assert parsed.type_url == CLUSTER and parsed.nonce == "7"
    assert [(r.name, r.version) for r in parsed.resources] == [("c2", c2.version)]
    assert parsed.resources[0].resource == Any.FromString(c2.any)
    assert list(parsed.removed_resources) == ["gone1", "gone2"]
