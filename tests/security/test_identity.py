"""SPIFFE IDs for gateways and the seed's consumers (the mapping README documents)."""

import pytest

from xds_server.security.identity import (
    IdentityError,
    SpiffeId,
    consumer_id,
    gateway_id,
    parse_spiffe_id,
)


@pytest.mark.parametrize(
    ("kind", "value", "expected"),
    [
        ("account-app", "prod-api", "spiffe://dgw.local/prod/api"),
        ("account-app", "studio_prod-ui", "spiffe://dgw.local/studio_prod/ui"),
        ("account-app", "prod-api-v2", "spiffe://dgw.local/prod/api-v2"),
        ("app", "api", "spiffe://dgw.local/default/api"),
        ("spiffe", "spiffe://dgw.local/test/cli", "spiffe://dgw.local/test/cli"),
    ],
)
def test_seed_consumers_map_to_spiffe_ids(kind, value, expected):
    assert str(consumer_id(kind, value)) == expected


def test_gateway_identity_names_its_shard():
    assert str(gateway_id("kv")) == "spiffe://dgw.local/gateway/kv"
    assert gateway_id("kv", "example.org") == SpiffeId("example.org", "gateway", "kv")


@pytest.mark.parametrize(
    ("kind", "value", "message"),
    [
        ("account-app", "prodapi", "ACCOUNT-APP"),
        ("account-app", "-api", "ACCOUNT-APP"),
        ("account-app", "prod-a/b", "cannot be part of a SPIFFE ID"),
        ("group", "x", "not one of"),
        ("spiffe", "https://x/y/z", "must start with spiffe://"),
        ("spiffe", "spiffe://dgw.local/a", "ACCOUNT/APP"),
        ("spiffe", "spiffe://Bad Domain/a/b", "trust domain"),
    ],
)
def test_names_that_cannot_be_identities_say_why(kind, value, message):
    with pytest.raises(IdentityError, match=message):
        consumer_id(kind, value)


def test_a_long_bad_value_is_quoted_only_in_part():
    with pytest.raises(IdentityError) as e:
        parse_spiffe_id("x" * 100_000)
    assert len(str(e.value)) < 200
