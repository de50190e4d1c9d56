"""Delta (incremental) ADS conformance, with a scripted client against a real server.

Absence of a response is proven with ``Delta.probe()``: subscribing to a secret the
node lacks must be answered next, and a stream writes its responses in order.
"""

from __future__ import annotations

import grpc

from tests.ads.ads_samples import basic
from tests.ads.ads_script import Delta, delta_names
from tests.ads.ads_wait import eventually
from tests.ads.conftest import Ads
from xds_server.cache import SnapshotCache
from xds_server.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE


async def subscribe_all(d: Delta) -> dict[str, dict[str, str]]:
    """Subscribe like Envoy (wildcard CDS/LDS, EDS/RDS by name), ACK all; return versions."""
    have: dict[str, dict[str, str]] = {}
    for type_url, names in ((CLUSTER, []), (ENDPOINT, ["c1", "c2"]), (LISTENER, []), (ROUTE, ["r1"])):
        await d.request(type_url, names)
        r = await d.recv_ack(type_url)
        have[type_url] = {res.name: res.version for res in r.resources}
    return have


# -- wildcard and by name (rule 9) ---------------------------------------------------


async def test_wildcard_by_empty_first_request_or_star_and_endpoints_by_name(ads: Ads) -> None:
    ads.cache.set_shard("s1", basic(listeners={"l1": (1, "r1"), "l2": (2, "r1")}))
    d = Delta(ads.channel)
    await d.request(CLUSTER)  # legacy wildcard: no names on the first request
    cds = await d.recv_ack(CLUSTER)
    assert delta_names(cds) == ["c1", "c2"]
    assert cds.system_version_info == ads.cache.shard_versions("s1")[CLUSTER]
    await d.request(LISTENER, ["*"])
    assert delta_names(await d.recv_ack(LISTENER)) == ["l1", "l2"]
    await d.request(ENDPOINT, ["c2", "missing"])
    assert delta_names(await d.recv_ack(ENDPOINT)) == ["c2"]
    await d.probe()
    await d.close()


# -- initial_resource_versions (rule 5) ----------------------------------------------


async def test_reconnect_gets_only_what_differs_and_removals(ads: Ads, start_server) -> None:
    ads.cache.set_shard("s1", basic())
    d = Delta(ads.channel)
    have = await subscribe_all(d)
    await d.close()

    # A restarted control plane whose config changed c1 and dropped c2.
    cache = SnapshotCache()
    cache.set_shard(
        "s1", basic(clusters={"c1": 2000, "c3": 1000}, endpoints={"c1": (9001,), "c3": (9003,)})
    )
    server, address = await start_server(cache)
    channel = grpc.aio.insecure_channel(address)
    try:
        d2 = Delta(channel)
        await d2.request(CLUSTER, initial=have[CLUSTER])
        updates = await d2.recv_ack(CLUSTER)
        assert delta_names(updates) == ["c1", "c3"]  # c1 changed, c3 is new
        assert list(updates.removed_resources) == []
        removals = await d2.recv_ack(CLUSTER)  # removals come in a later response
        assert delta_names(removals) == [] and list(removals.removed_resources) == ["c2"]

        # The unchanged listener is not sent; the first request still gets an answer.
        await d2.request(LISTENER, initial=have[LISTENER])
        lds = await d2.recv_ack(LISTENER)
        assert delta_names(lds) == [] and list(lds.removed_resources) == []
        await d2.probe()
        await d2.close()
    finally:
        await channel.close()
        await server.stop(None)


async def test_endpoints_the_node_has_are_not_resent_on_reconnect(ads: Ads) -> None:
    ads.cache.set_shard("s1", basic())
    d = Delta(ads.channel)
    have = await subscribe_all(d)
    await d.close()
    d2 = Delta(ads.channel, "n1")
    await d2.request(ENDPOINT, ["c1", "c2"], initial=have[ENDPOINT])
    eds = await d2.recv_ack(ENDPOINT)
    assert delta_names(eds) == []
    await d2.probe()
    await d2.close()


# -- NACK (rule 2) -------------------------------------------------------------------


async def test_nack_is_recorded_and_nothing_is_resent_until_newer(ads: Ads) -> None:
    ads.cache.set_shard("s1", basic())
    d = Delta(ads.channel)
    await d.request(CLUSTER)
    first = await d.recv_ack(CLUSTER)
    ads.cache.set_shard("s1", basic(clusters={"c1": 5, "c2": 1000}))
    bad = await d.recv(CLUSTER)
    assert delta_names(bad) == ["c1"]
    await d.request(CLUSTER, nonce=bad.nonce, error="c1: timeout too small")
    await d.probe()

    status = ads.cache.node_status()[0].types[CLUSTER]
    assert status.acked_version == first.system_version_info
    assert status.last_nack is not None
    assert status.last_nack.version == bad.system_version_info
    assert status.last_nack.message == "c1: timeout too small"

    ads.cache.set_shard("s1", basic(clusters={"c1": 3000, "c2": 1000}))
    good = await d.recv_ack(CLUSTER)
    assert delta_names(good) == ["c1"]
    await eventually(
        lambda: ads.cache.node_status()[0].types[CLUSTER].acked_version
        == good.system_version_info
    )
    await d.close()


# -- subscriptions whatever the nonce (rule 3) ---------------------------------------


async def test_subscription_change_is_honoured_with_a_stale_nonce(ads: Ads) -> None:
    ads.cache.set_shard("s1", basic())
    d = Delta(ads.channel)
    await d.request(ENDPOINT, ["c1"])
    old = await d.recv_ack(ENDPOINT)
    ads.cache.set_shard("s1", basic(endpoints={"c1": (9101,), "c2": (9002,)}))
    await d.recv(ENDPOINT)  # a newer response; ``old.nonce`` is now stale
    await d.request(ENDPOINT, ["c2"], ["c1"], nonce=old.nonce)
    r = await d.recv_ack(ENDPOINT)
    assert delta_names(r) == ["c2"]
    ads.cache.set_shard("s1", basic(endpoints={"c1": (1,), "c2": (9002,)}))  # c1 is no longer ours
    await d.probe()
    await d.close()


# -- order: updates, then removals; EDS after CDS (rule 4) ---------------------------


async def test_removals_follow_all_updates_users_first(ads: Ads) -> None:
    ads.cache.set_shard("s1", basic())
    d = Delta(ads.channel)
    await subscribe_all(d)
    # c2 and l1 go; c3 and l2 come, l2 routed by the updated r1 to c3.
    ads.cache.set_shard(
        "s1",
        basic(
            clusters={"c1": 1000, "c3": 1000},
            endpoints={"c1": (9001,), "c3": (9003,)},
            listeners={"l2": (10002, "r1")},
            routes={"r1": "c3"},
        ),
    )
    seen = [await d.recv() for _ in range(7)]
    summary = [
        (r.type_url, delta_names(r), list(r.removed_resources)) for r in seen
    ]
    assert summary == [
        (CLUSTER, ["c3"], []),
        (ENDPOINT, ["c1"], []),  # owed after a CDS update (c2 is gone, c3 not yet asked)
        (LISTENER, ["l2"], []),
        (ROUTE, ["r1"], []),
        (LISTENER, [], ["l1"]),
        (CLUSTER, [], ["c2"]),
        (ENDPOINT, [], ["c2"]),
    ], summary
    await d.close()


async def test_cluster_update_is_followed_by_its_endpoints(ads: Ads) -> None:
    ads.cache.set_shard("s1", basic())
    d = Delta(ads.channel)
    have = await subscribe_all(d)
    ads.cache.set_shard("s1", basic(clusters={"c1": 2000, "c2": 1000}))
    assert delta_names(await d.recv_ack(CLUSTER)) == ["c1"]
    eds = await d.recv_ack(ENDPOINT)
    assert {r.name: r.version for r in eds.resources} == have[ENDPOINT]  # unchanged, resent
    await d.probe()
    await d.close()


# -- only what changed; no-op edits (rule 6) -----------------------------------------


async def test_only_changed_resources_are_sent_and_noop_edits_send_nothing(ads: Ads) -> None:
    ads.cache.set_shard("s1", basic())
    d = Delta(ads.channel)
    await subscribe_all(d)
    assert ads.cache.set_shard("s1", basic()) is False
    ads.cache.set_shard("s1", basic(endpoints={"c1": (9001,), "c2": (7777,)}))
    assert delta_names(await d.recv_ack(ENDPOINT)) == ["c2"]
    await d.probe()  # no listener, no cluster
    for port in range(20):  # a burst: one response with the latest
        ads.cache.set_shard("s1", basic(endpoints={"c1": (9001,), "c2": (8000 + port,)}))
    assert delta_names(await d.recv_ack(ENDPOINT)) == ["c2"]
    await d.probe()
    await d.close()


# -- per-node state is freed (rule 8) ------------------------------------------------


async def test_closed_delta_stream_leaves_nothing_behind(ads: Ads) -> None:
    ads.cache.set_shard("s1", basic())
    d = Delta(ads.channel)
    await subscribe_all(d)
    assert [s.stream for s in ads.cache.node_status()] == ["delta"]
    await d.close()
    await eventually(lambda: ads.cache.stats().streams == 0)
    assert ads.cache.stats().watched_nodes == 0
