"""The conformance scenarios of ``test_conformance_machines`` over gRPC, against a
running server: state of the world and delta, on ADS and on the per-type services
(xds_protocol "RPC Services and Methods for Each Variant")."""

from __future__ import annotations

import grpc
import pytest

from testkit.ads_client import AdsCall, delta_request, make_node, sotw_request
from tests.ads.ads_samples import basic
from tests.ads.ads_script import Delta, Sotw, delta_names, names_of
from tests.ads.conftest import Ads
from xds_server.ads.server import TYPE_SERVICES
from xds_server.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET

EXISTING = {CLUSTER: "c1", ENDPOINT: "c1", LISTENER: "l1", ROUTE: "r1", SECRET: "s1"}
SERVICE_OF = {s.type_url: s for s in TYPE_SERVICES}
RTDS = "type.googleapis.com/envoy.service.runtime.v3.Runtime"


def method(type_url: str, delta: bool, via: str) -> str | None:
    """None: ADS; else the per-type service's method."""
    if via == "ads":
        return None
    service = SERVICE_OF[type_url]
    return f"/{service.name}/{service.delta_method if delta else service.sotw_method}"


via_both = pytest.mark.parametrize("via", ["ads", "per-type"])
each_type = pytest.mark.parametrize("t", list(EXISTING), ids=lambda t: t.rsplit(".", 1)[-1])


@via_both
async def test_sotw_empty_list_after_named_subscription_unsubscribes(ads: Ads, via: str):
    """"How the client specifies what resources to return" (issue #11 deviation 1)."""
    ads.cache.set_shard("s1", basic(clusters={"c1": 1, "c2": 1, "c3": 1}))
    s = Sotw(ads.channel, method=method(CLUSTER, False, via))
    await s.request(CLUSTER, ["c1", "c2"])
    assert names_of(await s.recv_ack(CLUSTER, ["c1", "c2"])) == ["c1", "c2"]
    await s.request(CLUSTER, [])  # unsubscribe from everything
    await s.request(CLUSTER, ["c3"])
    # Had [] been a wildcard, every cluster would have come back first.
    assert names_of(await s.recv(CLUSTER)) == ["c3"]
    await s.close()


@via_both
@each_type
async def test_sotw_named_subscription_per_type(ads: Ads, via: str, t: str):
    ads.cache.set_shard("s1", basic())
    s = Sotw(ads.channel, method=method(t, False, via))
    await s.request(t, [EXISTING[t], "missing"])
    r = await s.recv_ack(t, [EXISTING[t], "missing"])
    assert names_of(r) == [EXISTING[t]]
    status = ads.cache.node_status()[0].types[t]
    assert status.sent_version == r.version_info
    await s.close()


@via_both
@each_type
async def test_delta_requested_resource_that_does_not_exist_is_reported(ads: Ads, via: str, t: str):
    """"Knowing When a Requested Resource Does Not Exist" (issue #11 deviation 2)."""
    ads.cache.set_shard("s1", basic())
    d = Delta(ads.channel, method=method(t, True, via))
    await d.request(t, [EXISTING[t], "missing"])
    r = await d.recv_ack(t)
    assert delta_names(r) == [EXISTING[t]] and list(r.removed_resources) == ["missing"]
    await d.close()


@via_both
async def test_delta_resubscribing_resends_what_the_node_holds(ads: Ads, via: str):
    """"Subscribing to Resources" (issue #11 deviation 3)."""
    ads.cache.set_shard("s1", basic())
    d = Delta(ads.channel, method=method(ENDPOINT, True, via))
    await d.request(ENDPOINT, ["c1"])
    first = await d.recv_ack(ENDPOINT)
    await d.request(ENDPOINT, ["c1"])
    again = await d.recv_ack(ENDPOINT)
    assert delta_names(again) == ["c1"]
    assert [r.version for r in again.resources] == [r.version for r in first.resources]
    await d.close()


@via_both
async def test_delta_unsubscribing_a_name_covered_by_the_wildcard_is_answered(ads: Ads, via: str):
    """"Unsubscribing from Resources" (issue #11 deviation 4)."""
    ads.cache.set_shard("s1", basic())
    d = Delta(ads.channel, method=method(CLUSTER, True, via))
    await d.request(CLUSTER, ["*", "c1"])
    assert delta_names(await d.recv_ack(CLUSTER)) == ["c1", "c2"]
    await d.request(CLUSTER, unsubscribe=["c1"])
    r = await d.recv_ack(CLUSTER)
    assert delta_names(r) == ["c1"] and list(r.removed_resources) == []
    await d.close()


async def test_unserved_type_is_answered_empty_sotw_and_delta(ads: Ads):
    ads.cache.set_shard("s1", basic())
    s = Sotw(ads.channel)
    await s.request(RTDS, ["layer"])
    r = await s.recv(RTDS)
    assert list(r.resources) == []
    await s.probe()  # the stream goes on serving
    await s.close()
    d = Delta(ads.channel)
    await d.request(RTDS, ["layer"])
    dr = await d.recv(RTDS)
    assert delta_names(dr) == [] and list(dr.removed_resources) == ["layer"]
    await d.close()


async def test_per_type_service_refuses_another_type(ads: Ads):
    ads.cache.set_shard("s1", basic())
    call = AdsCall(ads.channel, method=method(CLUSTER, False, "per-type"))
    await call.send(sotw_request(LISTENER, node=make_node("n1", "s1")))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call.recv()
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "serves type.googleapis.com/envoy.config.cluster.v3.Cluster only" in (
        err.value.details() or ""
    )
    await call.close()


async def test_per_type_service_fills_an_empty_type_url(ads: Ads):
    ads.cache.set_shard("s1", basic())
    call = AdsCall(ads.channel, method=method(CLUSTER, False, "per-type"))
    await call.send(sotw_request("", node=make_node("n1", "s1")))
    assert names_of(await call.recv()) == ["c1", "c2"]  # type: ignore[arg-type]
    await call.close()


@pytest.mark.parametrize("delta", [False, True])
async def test_node_without_cluster_is_told_what_to_set(ads: Ads, delta: bool):
    call = AdsCall(ads.channel, delta=delta)
    node = make_node("n1", "")
    await call.send(delta_request(CLUSTER, node=node) if delta else sotw_request(CLUSTER, node=node))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call.recv()
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "node.cluster is empty: set it to the name of the shard" in (err.value.details() or "")
    await call.close()


@pytest.mark.parametrize("delta", [False, True])
async def test_too_many_names_end_the_stream_naming_the_limit(ads: Ads, delta: bool):
    ads.cache.set_shard("s1", basic())
    call = AdsCall(ads.channel, delta=delta)
    names = [f"n{i}" for i in range(10_001)]
    node = make_node("n1", "s1")
    await call.send(
        delta_request(ENDPOINT, node=node, subscribe=names)
        if delta
        else sotw_request(ENDPOINT, node=node, names=names)
    )
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call.recv()
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "ads_limits.max_names_per_request" in (err.value.details() or "")
    await call.close()
