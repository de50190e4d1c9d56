"""SPIFFE IDs for gateways and their consumers.

A workload identity is ``spiffe://<trust-domain>/<account>/<app>``. The seed's deploy
desires name consumers as ``{type: account-app, value: prod-api}``: the value is
``ACCOUNT-APP`` split at the *first* ``-`` (accounts use ``_``, as in
``studio_prod-ui`` → account ``studio_prod``, app ``ui``; an app name may itself hold
dashes: ``prod-api-v2`` → ``prod`` / ``api-v2``). ``{type: app, value: api}`` is the app
in the default account, and ``{type: spiffe, value: spiffe://...}`` is taken as written.
A gateway of shard S is ``spiffe://<trust-domain>/gateway/S``.

The account ``gateway`` is reserved: no consumer (and so no application certificate,
client join token or listener grant) may be in it, so an application can never be, or
be mistaken for, a gateway. The server's own ID has one path segment and no consumer
(always two) can equal it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

DEFAULT_TRUST_DOMAIN = "dgw.local"
DEFAULT_ACCOUNT = "default"
GATEWAY_ACCOUNT = "gateway"
RESERVED_ACCOUNTS = frozenset({GATEWAY_ACCOUNT})

_TRUST_DOMAIN = re.compile(r"[a-z0-9._-]{1,255}")
_SEGMENT = re.compile(r"[A-Za-z0-9._~-]{1,128}")


class IdentityError(ValueError):
    """A name that cannot be a SPIFFE ID; the message says which part and why."""


@dataclass(frozen=True, order=True)
class SpiffeId:
    trust_domain: str
    account: str
    app: str

    def __str__(self) -> str:
        return f"spiffe://{self.trust_domain}/{self.account}/{self.app}"

    @property
    def uri(self) -> str:
        return str(self)


def _check_segment(value: str, what: str) -> str:
    if not _SEGMENT.fullmatch(value):
        raise IdentityError(
            f"{what} {value[:80]!r} cannot be part of a SPIFFE ID: use 1-128 of A-Z a-z 0-9 . _ ~ -"
        )
    return value


def _check_trust_domain(value: str) -> str:
    if not _TRUST_DOMAIN.fullmatch(value):
        raise IdentityError(
            f"trust domain {value[:80]!r} is not valid: use lower-case letters, digits, '.', '_', '-'"
        )
    return value


def gateway_id(shard: str, trust_domain: str = DEFAULT_TRUST_DOMAIN) -> SpiffeId:
    """The identity of every gateway host of ``shard``."""
    return SpiffeId(_check_trust_domain(trust_domain), GATEWAY_ACCOUNT, _check_segment(shard, "shard"))


def gateway_dns_name(shard: str, trust_domain: str = DEFAULT_TRUST_DOMAIN) -> str:
    """The DNS name a gateway certificate also holds, ``SHARD.gateway.TRUST_DOMAIN``:
    what a client that checks host names (gRPC, curl, psql's sslmode=verify-full) is
    told to expect, as SPIFFE-unaware clients cannot check the URI SAN."""
    return f"{_check_segment(shard, 'shard')}.{GATEWAY_ACCOUNT}.{_check_trust_domain(trust_domain)}"


def consumer_id(kind: str, value: str, trust_domain: str = DEFAULT_TRUST_DOMAIN) -> SpiffeId:
    """The identity a deploy-desires consumer ``{type: kind, value: value}`` names; never
    one in a reserved account (a gateway's)."""
    identity = _consumer_id(kind, value, trust_domain)
    if identity.account in RESERVED_ACCOUNTS:
        raise IdentityError(
            f"consumer {value[:80]!r} names account {identity.account!r}, which is reserved for "
            "gateways: an application's identity can never be a gateway's"
        )
    return identity


def _consumer_id(kind: str, value: str, trust_domain: str) -> SpiffeId:
    td = _check_trust_domain(trust_domain)
    if kind == "account-app":
        account, sep, app = value.partition("-")
        if not sep or not account or not app:
            raise IdentityError(
                f"account-app consumer {value[:80]!r} must be ACCOUNT-APP, e.g. prod-api"
            )
        return SpiffeId(td, _check_segment(account, "account"), _check_segment(app, "app"))
    if kind == "app":
        return SpiffeId(td, DEFAULT_ACCOUNT, _check_segment(value, "app"))
    if kind == "spiffe":
        return parse_spiffe_id(value)
    raise IdentityError(f"consumer type {kind!r} is not one of account-app, app, spiffe")


def parse_spiffe_id(uri: str) -> SpiffeId:
    """``spiffe://TD/ACCOUNT/APP`` → SpiffeId; anything else is an IdentityError."""
    prefix = "spiffe://"
    if not uri.startswith(prefix):
        raise IdentityError(f"{uri[:80]!r} is not a SPIFFE ID: it must start with spiffe://")
    parts = uri[len(prefix):].split("/")
    if len(parts) != 3:
        raise IdentityError(
            f"{uri[:80]!r} is not a workload SPIFFE ID: use spiffe://TRUST_DOMAIN/ACCOUNT/APP"
        )
    td, account, app = parts
    return SpiffeId(_check_trust_domain(td), _check_segment(account, "account"), _check_segment(app, "app"))


def server_dns_name(trust_domain: str = DEFAULT_TRUST_DOMAIN) -> str:
    """The DNS name every replica's certificate holds, ``xds-server.TRUST_DOMAIN``: a
    sidecar given several replicas' addresses checks this name (``ssl_target_name_override``),
    as one name cannot be each replica's address."""
    return f"xds-server.{_check_trust_domain(trust_domain)}"


def server_uri(trust_domain: str = DEFAULT_TRUST_DOMAIN) -> str:
    """The xds_server's own SPIFFE ID: what Envoys and sidecars check its certificate for."""
    return f"spiffe://{_check_trust_domain(trust_domain)}/xds-server"
