"""Bearer tokens: hashed at rest, roles, shard scope, one-time join tokens, expiry."""

from __future__ import annotations

import datetime as dt

import pytest

from xds_server.security.tokens import (
    MemoryTokenStore,
    TokenError,
    authenticate,
    grants,
    mint,
    parse,
)

NOW = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)


@pytest.fixture
def store():
    return MemoryTokenStore()


def test_a_token_is_shown_once_and_only_its_hash_is_kept(store):
    token, record = mint("ci", "operator", NOW)
    store.add(record)
    assert token.startswith("dgw_")
    assert token.split("_", 2)[2] not in repr(record)
    assert authenticate(store, token, "reader", NOW).name == "ci"


@pytest.mark.parametrize(
    ("have", "need", "ok"),
    [
        ("admin", "operator", True),
        ("operator", "reader", True),
        ("reader", "operator", False),
        ("operator", "admin", False),
        ("admin", "node", False),
        ("node", "reader", False),
    ],
)
def test_roles_are_ordered_and_node_is_apart(have, need, ok):
    assert grants(have, need, have_shard="kv" if have == "node" else None) is ok


def test_a_node_token_is_for_its_shard_only(store):
    token, record = mint("host-1", "node", NOW, shard="kv")
    store.add(record)
    assert authenticate(store, token, "node", NOW, shard="kv").shard == "kv"
    with pytest.raises(TokenError, match="may not act as node for shard 'other'"):
        authenticate(store, token, "node", NOW, shard="other")


def test_a_join_token_works_once_and_expires(store):
    token, record = mint("join", "node", NOW, shard="kv", ttl=dt.timedelta(minutes=5), one_time=True)
    store.add(record)
    assert authenticate(store, token, "node", NOW, shard="kv").used_at == NOW
    with pytest.raises(TokenError, match="already used"):
        authenticate(store, token, "node", NOW, shard="kv")
    late, record = mint("late", "node", NOW, shard="kv", ttl=dt.timedelta(minutes=5), one_time=True)
    store.add(record)
    with pytest.raises(TokenError, match="expired"):
        authenticate(store, late, "node", NOW + dt.timedelta(minutes=5))


def test_revoked_unknown_and_forged_tokens_are_refused_without_echoing_them(store):
    token, record = mint("ops", "admin", NOW)
    store.add(record)
    forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    for bad, message in ((forged, "unknown token"), ("dgw_" + "0" * 12 + "_" + "x" * 43, "unknown token")):
        with pytest.raises(TokenError, match=message) as e:
            authenticate(store, bad, "reader", NOW)
        assert bad not in str(e.value)
    store.revoke(record.token_id)
    with pytest.raises(TokenError, match="revoked"):
        authenticate(store, token, "reader", NOW)


def test_malformed_tokens_say_what_a_token_looks_like():
    with pytest.raises(TokenError, match="look like") as e:
        parse("Bearer hunter2")
    assert "hunter2" not in str(e.value)


@pytest.mark.parametrize(
    ("role", "shard", "message"),
    [("node", None, "give --shard"), ("admin", "kv", "drop --shard"), ("root", None, "not one of")],
)
def test_minting_checks_role_and_scope(role, shard, message):
    with pytest.raises(TokenError, match=message):
        mint("x", role, NOW, shard=shard)
