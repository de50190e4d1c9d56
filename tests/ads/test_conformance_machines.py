"""Conformance of the pure state machines to Envoy's xds_protocol, one rule per case.

Each test names the section of ``api-docs/xds_protocol`` ("The xDS transport
Protocol" and "Incremental xDS") whose rule it checks, and runs for every resource
type we serve (wildcard rules for CDS/LDS only). Requests in, decoded responses out:
``SotwStream`` / ``DeltaStream`` do no I/O.
"""

from __future__ import annotations

import pytest

from testkit.ads_client import delta_request, sotw_request
from tests.ads.machines import TYPES, delta_sent, new_delta, new_sotw, snap, sotw_sent
from xds_server.ads.delta import IN_FLIGHT_LIMIT
from xds_server.ads.events import Refused
from xds_server.cache import WILDCARD_TYPES
from xds_server.settings import AdsLimits

RTDS = "type.googleapis.com/envoy.service.runtime.v3.Runtime"
BY_NAME = [t for t in TYPES if t not in WILDCARD_TYPES]
WILDCARD = [t for t in TYPES if t in WILDCARD_TYPES]


def _short(type_url: str) -> str:
    return type_url.rsplit(".", 1)[-1]


each_type = pytest.mark.parametrize("t", TYPES, ids=_short)
wildcard_types = pytest.mark.parametrize("t", WILDCARD, ids=_short)
by_name_types = pytest.mark.parametrize("t", BY_NAME, ids=_short)


# ---- state of the world ------------------------------------------------------------


@each_type
def test_sotw_how_the_client_specifies_resources__named_gets_exactly_those_that_exist(t: str):
    s, _ = new_sotw()
    s.on_request(sotw_request(t, names=["b", "a", "missing"]))
    [r] = sotw_sent(s.pending(snap(t, {"a": 0, "b": 0, "c": 0})))
    assert r.names == ["a", "b"]


@each_type
def test_sotw_how_the_client_specifies_resources__empty_list_after_names_unsubscribes(t: str):
    """Issue #11 deviation 1: after named subscriptions an empty list is no wildcard."""
    view = snap(t, {"a": 0, "b": 0, "c": 0})
    s, _ = new_sotw()
    s.on_request(sotw_request(t, names=["a", "b"]))
    [r] = sotw_sent(s.pending(view))
    s.on_request(sotw_request(t, version=r.version, nonce=r.nonce))
    s.on_request(sotw_request(t, names=[], version=r.version, nonce=r.nonce))
    assert s.pending(view) == []
    assert s.pending(snap(t, {"a": 1, "b": 1, "c": 1})) == []  # nor on later changes


@wildcard_types
def test_sotw_how_the_client_specifies_resources__legacy_wildcard_then_star_then_names(t: str):
    s, _ = new_sotw()
    view = snap(t, {"a": 0, "b": 0})
    s.on_request(sotw_request(t))  # never named anything: wildcard
    [r1] = sotw_sent(s.pending(view))
    assert r1.names == ["a", "b"]
    s.on_request(sotw_request(t, names=["*", "a"], version=r1.version, nonce=r1.nonce))
    assert s.pending(view) == []  # still the wildcard: nothing new
    s.on_request(sotw_request(t, names=["a"], version=r1.version, nonce=r1.nonce))
    [r2] = sotw_sent(s.pending(view))
    assert r2.names == ["a"]  # the wildcard is gone, "a" stays
    s.on_request(sotw_request(t, names=[], version=r2.version, nonce=r2.nonce))
    assert s.pending(view) == []  # identical to the first request, yet an unsubscription


@by_name_types
def test_sotw_how_the_client_specifies_resources__no_wildcard_for_by_name_types(t: str):
    s, _ = new_sotw()
    s.on_request(sotw_request(t))
    assert s.pending(snap(t, {"a": 0})) == []


@each_type
def test_sotw_how_the_client_specifies_resources__newly_requested_names_are_resent(t: str):
    view = snap(t, {"a": 0})
    s, _ = new_sotw()
    s.on_request(sotw_request(t, names=["a"]))
    [r1] = sotw_sent(s.pending(view))
    s.on_request(sotw_request(t, names=[], version=r1.version, nonce=r1.nonce))
    assert s.pending(view) == []
    s.on_request(sotw_request(t, names=["a"], version=r1.version, nonce=r1.nonce))
    [r2] = sotw_sent(s.pending(view))
    assert r2.names == ["a"] and r2.version == r1.version


@each_type
def test_sotw_when_to_send_an_update__not_at_the_version_the_node_has(t: str):
    view = snap(t, {"a": 0})
    s, _ = new_sotw()
    s.on_request(sotw_request(t, names=["a"]))
    [r] = sotw_sent(s.pending(view))
    fresh, _ = new_sotw()  # a reconnecting node reports the version it has
    fresh.on_request(sotw_request(t, names=["a"], version=r.version))
    assert fresh.pending(view) == []


@each_type
def test_sotw_resource_updates__request_with_stale_nonce_is_ignored(t: str):
    s, _ = new_sotw()
    s.on_request(sotw_request(t, names=["a"]))
    [r1] = sotw_sent(s.pending(snap(t, {"a": 0})))
    s.on_request(sotw_request(t, names=["a"], version=r1.version, nonce=r1.nonce))
    [r2] = sotw_sent(s.pending(snap(t, {"a": 1})))
    received = s.on_request(sotw_request(t, names=["a", "b"], nonce=r1.nonce))
    assert received.kind == "stale"
    assert s.pending(snap(t, {"a": 1, "b": 0})) == []  # r2 unanswered: lock-step holds
    assert r2.names == ["a"]


@each_type
def test_sotw_ack_nack__nack_recorded_with_its_version_and_never_resent(t: str):
    s, status = new_sotw(AdsLimits(max_error_detail_chars=100))
    s.on_request(sotw_request(t, names=["a"]))
    [good] = sotw_sent(s.pending(snap(t, {"a": 0})))
    s.on_request(sotw_request(t, names=["a"], version=good.version, nonce=good.nonce))
    [bad] = sotw_sent(s.pending(snap(t, {"a": 1})))
    received = s.on_request(
        sotw_request(t, names=["a"], version=good.version, nonce=bad.nonce, error="x" * 5000)
    )
    assert received.kind == "nack" and received.version == bad.version
    assert s.pending(snap(t, {"a": 1})) == []
    nack = status.snapshot().types[t].last_nack
    assert nack is not None and nack.version == bad.version
    assert nack.message.startswith("x" * 100) and len(nack.message) < 200  # bounded
    assert status.snapshot().types[t].acked_version == good.version


def test_sotw_unserved_type_is_answered_empty_so_the_client_stops_waiting():
    s, _ = new_sotw()
    received = s.on_request(sotw_request(RTDS, names=["layer"]))
    assert received.kind == "subscribe" and not received.served
    [r] = sotw_sent(s.pending(snap(TYPES[0], {})))
    assert r.type_url == RTDS and r.names == []
    s.on_request(sotw_request(RTDS, names=["layer"], version=r.version, nonce=r.nonce))
    assert s.pending(snap(TYPES[0], {})) == []  # answered once, ACKed, done


def test_sotw_limits_names_per_request_and_per_stream():
    s, _ = new_sotw(AdsLimits(max_names_per_request=3, max_names_per_stream=5))
    with pytest.raises(Refused, match=r"4 resource names; the limit is 3 \(ads_limits.max_names_per_request\)"):
        s.on_request(sotw_request(BY_NAME[0], names=["a", "b", "c", "d"]))
    s.on_request(sotw_request(BY_NAME[0], names=["a", "b", "c"]))
    with pytest.raises(Refused, match=r"ads_limits.max_names_per_stream") as err:
        s.on_request(sotw_request(BY_NAME[1], names=["a", "b", "c"]))
    assert err.value.code == "RESOURCE_EXHAUSTED"


# ---- incremental -------------------------------------------------------------------


@each_type
def test_delta_knowing_when_a_requested_resource_does_not_exist(t: str):
    """Issue #11 deviation 2: a subscribed name that does not exist is reported removed."""
    s, _ = new_delta()
    s.on_request(delta_request(t, subscribe=["a", "b"]))
    [r] = delta_sent(s.pending(snap(t, {"a": 0})))
    assert (r.names, r.removed) == (["a"], ["b"])
    s.on_request(delta_request(t, nonce=r.nonce))
    assert s.pending(snap(t, {"a": 0})) == []  # said once
    [r2] = delta_sent(s.pending(snap(t, {"a": 0, "b": 0})))  # it appears: sent
    assert (r2.names, r2.removed) == (["b"], [])


@each_type
def test_delta_subscribing_to_resources__resubscribing_resends_what_the_node_has(t: str):
    """Issue #11 deviation 3."""
    view = snap(t, {"a": 0})
    s, _ = new_delta()
    s.on_request(delta_request(t, subscribe=["a"]))
    [r] = delta_sent(s.pending(view))
    s.on_request(delta_request(t, nonce=r.nonce))
    s.on_request(delta_request(t, subscribe=["a"]))
    [again] = delta_sent(s.pending(view))
    assert again.names == ["a"]


@wildcard_types
def test_delta_unsubscribing__a_name_also_covered_by_the_wildcard_is_answered(t: str):
    """Issue #11 deviation 4: the resource again (still in the wildcard), or removed."""
    view = snap(t, {"a": 0, "b": 0})
    s, _ = new_delta()
    s.on_request(delta_request(t, subscribe=["*", "a", "zz"]))
    [r] = delta_sent(s.pending(view))
    assert (r.names, r.removed) == (["a", "b"], ["zz"])
    s.on_request(delta_request(t, nonce=r.nonce))
    s.on_request(delta_request(t, unsubscribe=["a", "zz"]))
    [answer] = delta_sent(s.pending(view))
    assert (answer.names, answer.removed) == (["a"], ["zz"])


@each_type
def test_delta_unsubscribing__without_wildcard_needs_no_answer(t: str):
    view = snap(t, {"a": 0, "b": 0})
    s, _ = new_delta()
    s.on_request(delta_request(t, subscribe=["a", "b"]))
    [r] = delta_sent(s.pending(view))
    s.on_request(delta_request(t, nonce=r.nonce))
    s.on_request(delta_request(t, unsubscribe=["a", "phantom"]))
    assert s.pending(view) == []
    assert s.pending(snap(t, {"a": 1, "b": 0})) == []  # a is no longer the node's


@wildcard_types
def test_delta_how_the_client_specifies_resources__legacy_wildcard_and_star_removal(t: str):
    view = snap(t, {"a": 0, "b": 0})
    s, _ = new_delta()
    s.on_request(delta_request(t))  # no names ever: wildcard
    [r] = delta_sent(s.pending(view))
    assert r.names == ["a", "b"]
    s.on_request(delta_request(t, subscribe=["a"], nonce=r.nonce))
    s.on_request(delta_request(t, unsubscribe=["*"]))
    sent = delta_sent(s.pending(snap(t, {"a": 1, "b": 1})))
    assert [(x.names, x.removed) for x in sent] == [(["a"], [])]  # b left with the wildcard


@each_type
def test_delta_incremental_xds__subscription_honoured_whatever_the_nonce(t: str):
    s, _ = new_delta()
    s.on_request(delta_request(t, subscribe=["a"]))
    [r1] = delta_sent(s.pending(snap(t, {"a": 0, "b": 0})))
    s.on_request(delta_request(t, nonce=r1.nonce))
    s.on_request(delta_request(t, subscribe=["b"], nonce="999"))  # not one of ours
    [r2] = delta_sent(s.pending(snap(t, {"a": 0, "b": 0})))
    assert r2.names == ["b"]


@each_type
def test_delta_incremental_xds__nack_with_stale_nonce_is_not_recorded(t: str):
    """Node status fix: a NACK of an unknown nonce has no version to blame."""
    s, status = new_delta()
    s.on_request(delta_request(t, subscribe=["a"]))
    [r] = delta_sent(s.pending(snap(t, {"a": 0})))
    s.on_request(delta_request(t, nonce=r.nonce))
    received = s.on_request(delta_request(t, nonce=r.nonce, error="late"))  # settled already
    assert received.kind == "stale"
    assert status.snapshot().types[t].last_nack is None
    [bad] = delta_sent(s.pending(snap(t, {"a": 1})))
    received = s.on_request(delta_request(t, nonce=bad.nonce, error="bad a"))
    assert received.kind == "nack"
    nack = status.snapshot().types[t].last_nack
    assert nack is not None and nack.version == bad.version != ""


@each_type
def test_delta_acks_of_every_response_in_flight_are_matched(t: str):
    """Node status fix: a node far behind is throttled, so no ACK is taken for stale."""
    s, status = new_delta()
    s.on_request(delta_request(t, subscribe=["a"]))
    sent = []
    for v in range(IN_FLIGHT_LIMIT + 4):
        sent += delta_sent(s.pending(snap(t, {"a": v})))
    assert len(sent) == IN_FLIGHT_LIMIT  # then nothing until the node answers
    kinds = [s.on_request(delta_request(t, nonce=r.nonce)).kind for r in sent]
    assert kinds == ["ack"] * IN_FLIGHT_LIMIT
    assert status.snapshot().types[t].acked_version == sent[-1].version
    [latest] = delta_sent(s.pending(snap(t, {"a": 99})))
    assert latest.names == ["a"]


@each_type
def test_delta_reconnect__initial_resource_versions_are_not_resent(t: str):
    view = snap(t, {"a": 0, "b": 0})
    s, _ = new_delta()
    s.on_request(delta_request(t, subscribe=["a", "b"]))
    [r] = delta_sent(s.pending(view))
    have = {"a": view[t].resources["a"].version, "gone": "x"}
    again, _ = new_delta()
    again.on_request(delta_request(t, subscribe=["a", "b", "gone"], initial=have))
    sent = delta_sent(again.pending(view))
    assert [(x.names, x.removed) for x in sent] == [(["b"], []), ([], ["gone"])]
    assert r.names == ["a", "b"]


def test_delta_unserved_type__names_reported_absent_wildcard_answered_empty():
    s, _ = new_delta()
    s.on_request(delta_request(RTDS, subscribe=["layer"]))
    [r] = delta_sent(s.pending(snap(TYPES[0], {})))
    assert (r.type_url, r.names, r.removed) == (RTDS, [], ["layer"])
    srds = "type.googleapis.com/envoy.config.route.v3.ScopedRouteConfiguration"
    s.on_request(delta_request(srds))
    [r2] = delta_sent(s.pending(snap(TYPES[0], {})))
    assert (r2.type_url, r2.names, r2.removed) == (srds, [], [])


def test_delta_limits_names_per_request_and_per_stream_and_unserved_types():
    s, _ = new_delta(AdsLimits(max_names_per_request=3, max_names_per_stream=5, max_unserved_types=1))
    with pytest.raises(Refused, match=r"ads_limits.max_names_per_request"):
        s.on_request(delta_request(BY_NAME[0], subscribe=["a", "b"], initial={"c": "1", "d": "1"}))
    s.on_request(delta_request(BY_NAME[0], subscribe=["a", "b", "c"]))
    with pytest.raises(Refused, match=r"ads_limits.max_names_per_stream"):
        s.on_request(delta_request(BY_NAME[0], subscribe=["d", "e", "f"]))
    s2, _ = new_delta(AdsLimits(max_unserved_types=1))
    s2.on_request(delta_request(RTDS))
    with pytest.raises(Refused, match=r"ads_limits.max_unserved_types"):
        s2.on_request(delta_request(RTDS + "2"))
