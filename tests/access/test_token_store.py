"""The SQLite token store: the ``TokenStore`` contract, on disk, owner-only."""

from __future__ import annotations

import datetime as dt
import stat

import pytest

from xds_server.security.token_store import DB_NAME, SqliteTokenStore, TokenStoreError
from xds_server.security.tokens import TokenError, authenticate, mint

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def test_records_survive_a_reopen_and_only_digests_are_stored(tmp_path):
    store = SqliteTokenStore.open(tmp_path)
    token, record = mint("ci", "operator", NOW, ttl=dt.timedelta(hours=1))
    node_token, node = mint("host-1", "node", NOW, shard="kv", one_time=True)
    store.add(record)
    store.add(node)
    assert authenticate(store, node_token, "node", NOW, shard="kv").used_at == NOW
    assert store.revoke(record.token_id) and not store.revoke("000000000000")
    store.close()

    again = SqliteTokenStore.open(tmp_path)
    try:
        assert sorted(r.name for r in again.list()) == ["ci", "host-1"]
        assert again.get(record.token_id).revoked
        assert again.get(record.token_id).expires_at == NOW + dt.timedelta(hours=1)
        assert again.get(node.token_id).used_at == NOW
        assert not again.spend(node.token_id, NOW)
        with pytest.raises(TokenError, match="revoked"):
            authenticate(again, token, "reader", NOW)
        with pytest.raises(TokenError, match="already used"):
            authenticate(again, node_token, "node", NOW, shard="kv")
    finally:
        again.close()
    raw = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith(DB_NAME))
    assert token.split("_", 2)[2].encode() not in raw
    assert stat.S_IMODE((tmp_path / DB_NAME).stat().st_mode) == 0o600


def test_a_database_that_is_not_one_is_refused_by_name(tmp_path):
    (tmp_path / DB_NAME).write_bytes(b"not a database" * 100)
    with pytest.raises(TokenStoreError, match=DB_NAME):
        SqliteTokenStore.open(tmp_path)
