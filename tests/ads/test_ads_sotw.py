"""State-of-the-world ADS conformance, with a scripted client against a real server.

Absence of a response is proven with ``Sotw.probe()``: a fresh SDS subscription must
be the next response, and the server writes a stream's responses in push order, so a
response wrongly due would arrive first.
"""

from __future__ import annotations

import grpc
import pytest
from envoy.config.endpoint.v3.endpoint_pb2 import ClusterLoadAssignment

from testkit.ads_client import AdsCall, sotw_request
from tests.ads.ads_samples import basic, cla
from tests.ads.ads_script import Sotw, names_of
from tests.ads.ads_wait import eventually
from tests.ads.conftest import Ads
from xds_server.cache import SnapshotCache
from xds_server.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET


async def subscribe_all(s: Sotw) -> dict[str, str]:
    """Subscribe to every type the way Envoy does and ACK everything; return versions."""
    await s.request(CLUSTER)
    await s.recv_ack(CLUSTER)
    await s.request(ENDPOINT, ["c1", "c2"])
    await s.recv_ack(ENDPOINT, ["c1", "c2"])
    await s.request(LISTENER)
    await s.recv_ack(LISTENER)
    await s.request(ROUTE, ["r1"])
    await s.recv_ack(ROUTE, ["r1"])
    await s.request(SECRET, ["s1"])
    await s.recv_ack(SECRET, ["s1"])
    return dict(s.version)


# -- waiting for the shard; wildcard and by-name (rule 9) ----------------------------


async def test_node_waits_for_its_shard_then_gets_every_cluster(ads: Ads) -> None:
    s = Sotw(ads.channel)
    await s.request(CLUSTER)
    await eventually(lambda: len(ads.cache.node_status()) == 1)
    ads.cache.set_shard("another-shard", basic())
    ads.cache.set_shard("s1", basic())
    r = await s.recv(CLUSTER)
    # The first response is the shard's: nothing was sent while it had no snapshot.
    assert names_of(r) == ["c1", "c2"]
    assert r.version_info == ads.cache.shard_versions("s1")[CLUSTER]
    await s.close()


async def test_wildcard_listeners_and_by_name_endpoints_and_routes(ads: Ads) -> None:
    ads.cache.set_shard("s1", basic(routes={"r1": "c1", "r2": "c2"}))
    s = Sotw(ads.channel)
    await s.request(LISTENER, ["*"])  # explicit wildcard is the same as none
    assert names_of(await s.recv_ack(LISTENER)) == ["l1"]

    await s.request(ENDPOINT, ["c1", "missing"])
    r1 = await s.recv(ENDPOINT)
    assert names_of(r1) == ["c1"]  # exactly the requested resources that exist
    await s.ack(r1, ["c1", "missing"])

    await s.request(ENDPOINT, ["c1", "c2"])  # the node asks for another set
    r2 = await s.recv(ENDPOINT)
    assert names_of(r2) == ["c1", "c2"]
    assert r2.version_info != r1.version_info
    await s.ack(r2, ["c1", "c2"])

    await s.request(ROUTE, ["r2"])
    assert names_of(await s.recv_ack(ROUTE, ["r2"])) == ["r2"]
    await s.probe()
    await s.close()


async def test_first_request_without_node_identity_is_refused(ads: Ads) -> None:
    call = AdsCall(ads.channel)
    await call.send(sotw_request(CLUSTER))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call.recv()
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    await call.close()


# -- versions are content hashes (rule 1) --------------------------------------------


async def test_request_at_current_version_gets_no_response(ads: Ads) -> None:
    ads.cache.set_shard("s1", basic())
    versions = ads.cache.shard_versions("s1")
    s = Sotw(ads.channel)
    await s.request(CLUSTER, version=versions[CLUSTER])
    await s.probe()
    assert ads.cache.node_status()[0].types[CLUSTER].acked_version == versions[CLUSTER]
    await s.close()


async def test_reconnect_after_server_restart_resends_nothing_the_node_has(
    ads: Ads, start_server
) -> None:
    ads.cache.set_shard("s1", basic())
    s = Sotw(ads.channel)
    have = await subscribe_all(s)
    await s.close()

    # A new process: new cache, new server, same content.
    cache = SnapshotCache()
    cache.set_shard("s1", basic())
    server, address = await start_server(cache)
    channel = grpc.aio.insecure_channel(address)
    try:
        s2 = Sotw(channel)
        await s2.request(CLUSTER, version=have[CLUSTER])
        await s2.request(ENDPOINT, ["c1", "c2"], version=have[ENDPOINT])
        await s2.request(LISTENER, version=have[LISTENER])
        await s2.request(ROUTE, ["r1"], version=have[ROUTE])
        await s2.probe()  # nothing at all was re-sent

        # Different content never matches: only the changed type is sent.
        cache.set_shard("s1", basic(clusters={"c1": 2000, "c2": 1000}))
        r = await s2.recv(CLUSTER)
        assert r.version_info not in (have[CLUSTER], "")
        await s2.close()
    finally:
        await channel.close()
        await server.stop(None)


# -- NACK (rule 2) -------------------------------------------------------------------


async def test_nack_is_recorded_and_the_rejected_version_never_resent(ads: Ads) -> None:
    ads.cache.set_shard("s1", basic())
    s = Sotw(ads.channel)
    await s.request(CLUSTER)
    v1 = (await s.recv_ack(CLUSTER)).version_info

    ads.cache.set_shard("s1", basic(clusters={"c1": 5, "c2": 1000}))
    bad = await s.recv(CLUSTER)
    await s.request(CLUSTER, version=v1, nonce=bad.nonce, error="cluster c1: bad timeout")

    await s.probe()  # the rejected version is not sent again
    status = ads.cache.node_status()[0].types[CLUSTER]
    assert status.acked_version == v1
    assert status.sent_version == bad.version_info
    assert status.last_nack is not None
    assert status.last_nack.version == bad.version_info
    assert status.last_nack.message == "cluster c1: bad timeout"

    ads.cache.set_shard("s1", basic(clusters={"c1": 3000, "c2": 1000}))  # a newer version
    good = await s.recv_ack(CLUSTER)
    assert good.version_info not in (v1, bad.version_info)
    await eventually(
        lambda: ads.cache.node_status()[0].types[CLUSTER].acked_version == good.version_info
    )
    await s.close()


# -- stale nonces (rule 3) -----------------------------------------------------------


async def test_request_with_stale_nonce_is_ignored(ads: Ads) -> None:
    ads.cache.set_shard("s1", basic())
    s = Sotw(ads.channel)
    await s.request(ENDPOINT, ["c1"])
    first = await s.recv_ack(ENDPOINT, ["c1"])

    ads.cache.set_shard("s1", basic(endpoints={"c1": (9101,), "c2": (9002,)}))
    second = await s.recv(ENDPOINT)
    # Sent after the server wrote ``second``: its nonce is no longer the latest.
    await s.request(ENDPOINT, ["c1", "c2"], version=first.version_info, nonce=first.nonce)
    await s.ack(second, ["c1"])
    await s.probe()  # had the stale request counted, EDS for c1+c2 would come first
    await s.close()


# -- push order, EDS after CDS (rule 4) ----------------------------------------------


async def test_changes_to_every_type_arrive_in_push_order(ads: Ads) -> None:
    ads.cache.set_shard("s1", basic())
    s = Sotw(ads.channel)
    await subscribe_all(s)
    ads.cache.set_shard(
        "s1",
        basic(
            clusters={"c1": 2000, "c2": 1000},
            endpoints={"c1": (9101,), "c2": (9002,)},
            listeners={"l1": (10001, "r1")},
            routes={"r1": "c2"},
            secrets={"s1": "two"},
        ),
    )
    order = [(await s.recv()).type_url for _ in range(5)]
    assert order == [CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET]
    await s.close()


async def test_every_cluster_change_is_followed_by_an_endpoints_answer(ads: Ads) -> None:
    ads.cache.set_shard("s1", basic())
    s = Sotw(ads.channel)
    have = await subscribe_all(s)
    ads.cache.set_shard("s1", basic(clusters={"c1": 2000, "c2": 1000}))
    await s.recv_ack(CLUSTER)
    # EDS did not change, yet Envoy's re-created c1 warms until it gets this answer.
    eds = await s.recv_ack(ENDPOINT, ["c1", "c2"])
    assert eds.version_info == have[ENDPOINT]
    assert names_of(eds) == ["c1", "c2"]
    await s.probe()
    await s.close()


async def test_later_types_wait_while_an_earlier_one_is_unacknowledged(ads: Ads) -> None:
    ads.cache.set_shard("s1", basic())
    s = Sotw(ads.channel)
    await subscribe_all(s)
    ads.cache.set_shard("s1", basic(clusters={"c1": 2000, "c2": 1000}))
    cds2 = await s.recv(CLUSTER)
    eds = await s.recv(ENDPOINT)
    # A new cluster and a listener route using it, while CDS is still in flight.
    ads.cache.set_shard(
        "s1",
        basic(
            clusters={"c1": 2000, "c2": 1000, "c3": 1000},
            endpoints={"c1": (9001,), "c2": (9002,), "c3": (9003,)},
            listeners={"l1": (10000, "r1"), "l2": (10002, "r2")},
            routes={"r1": "c1", "r2": "c3"},
        ),
    )
    await s.ack(cds2)
    cds3 = await s.recv(CLUSTER)  # not LDS: the listener may not overtake its cluster
    assert names_of(cds3) == ["c1", "c2", "c3"]
    await s.ack(eds, ["c1", "c2"])
    await s.ack(cds3)
    eds2 = await s.recv(ENDPOINT)  # the EDS answer owed after CDS
    await s.ack(eds2, ["c1", "c2", "c3"])
    seen = [await s.recv() for _ in range(2)]
    assert [r.type_url for r in seen] == [LISTENER, ENDPOINT]  # LDS; then EDS for c3
    assert names_of(seen[1]) == ["c1", "c2", "c3"]
    await s.close()


# -- coalescing, no-op edits, per-type versions (rule 6) -----------------------------


async def test_burst_of_edits_is_coalesced_into_the_latest(ads: Ads) -> None:
    ads.cache.set_shard("s1", basic())
    s = Sotw(ads.channel)
    await s.request(CLUSTER)
    await s.recv_ack(CLUSTER)
    for timeout in range(2000, 2010):
        ads.cache.set_shard("s1", basic(clusters={"c1": timeout, "c2": 1000}))
    latest = await s.recv_ack(CLUSTER)
    assert latest.version_info == ads.cache.shard_versions("s1")[CLUSTER]
    await s.probe()
    await s.close()


async def test_edit_that_changes_nothing_pushes_nothing(ads: Ads) -> None:
    ads.cache.set_shard("s1", basic())
    s = Sotw(ads.channel)
    await subscribe_all(s)
    assert ads.cache.set_shard("s1", basic()) is False
    await s.probe()
    await s.close()


async def test_listener_is_not_resent_when_only_routes_or_endpoints_change(ads: Ads) -> None:
    ads.cache.set_shard("s1", basic())
    s = Sotw(ads.channel)
    await subscribe_all(s)
    ads.cache.set_shard("s1", basic(routes={"r1": "c2"}))
    await s.recv_ack(ROUTE, ["r1"])
    await s.probe()
    ads.cache.set_shard("s1", basic(routes={"r1": "c2"}, endpoints={"c1": (1,), "c2": (9002,)}))
    await s.recv_ack(ENDPOINT, ["c1", "c2"])
    await s.probe()
    await s.close()


async def test_endpoint_change_of_an_unrequested_cluster_is_not_sent(ads: Ads) -> None:
    ads.cache.set_shard("s1", basic())
    s = Sotw(ads.channel)
    await s.request(ENDPOINT, ["c1"])
    await s.recv_ack(ENDPOINT, ["c1"])
    ads.cache.set_shard("s1", basic(endpoints={"c1": (9001,), "c2": (1234,)}))
    await s.probe()
    await s.close()


# -- per-shard and per-node reach (rule 7) -------------------------------------------


async def test_change_reaches_only_its_shard(ads: Ads) -> None:
    ads.cache.set_shard("a", basic())
    ads.cache.set_shard("b", basic())
    a, b = Sotw(ads.channel, "na", "a"), Sotw(ads.channel, "nb", "b")
    for s in (a, b):
        await s.request(CLUSTER)
        await s.recv_ack(CLUSTER)
    ads.cache.set_shard("a", basic(clusters={"c1": 7, "c2": 1000}))
    await a.recv_ack(CLUSTER)
    await b.probe()
    await a.close()
    await b.close()


async def test_node_endpoint_override_reaches_only_that_node(ads: Ads) -> None:
    ads.cache.set_shard("s1", basic())
    n1, n2 = Sotw(ads.channel, "n1"), Sotw(ads.channel, "n2")
    for s in (n1, n2):
        await s.request(ENDPOINT, ["c1", "c2"])
        await s.recv_ack(ENDPOINT, ["c1", "c2"])
    default = n1.version[ENDPOINT]

    assert ads.cache.set_node_endpoints("s1", "n1", {"c1": cla("c1", 7001)})
    own = await n1.recv_ack(ENDPOINT, ["c1", "c2"])
    ports = [
        ClusterLoadAssignment.FromString(a.value)
        .endpoints[0].lb_endpoints[0].endpoint.address.socket_address.port_value
        for a in own.resources
    ]
    assert ports == [7001, 9002]  # c1 is the node's own, c2 still the shard default
    await n2.probe()

    assert ads.cache.set_node_endpoints("s1", "n1", None)
    back = await n1.recv_ack(ENDPOINT, ["c1", "c2"])
    assert back.version_info == default
    await n1.close()
    await n2.close()


# -- per-node state is freed (rule 8) ------------------------------------------------


async def test_closed_stream_leaves_nothing_behind(ads: Ads) -> None:
    ads.cache.set_shard("s1", basic())
    streams = [Sotw(ads.channel, f"n{i}") for i in range(3)]
    for s in streams:
        await subscribe_all(s)
    assert ads.cache.stats().streams == 3
    for s in streams:
        await s.close()
    await eventually(lambda: ads.cache.stats().streams == 0)
    stats = ads.cache.stats()
    assert stats.watched_nodes == 0
    assert ads.cache.node_status() == []
