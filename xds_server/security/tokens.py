"""Bearer tokens: operators' API tokens and shard-scoped node (join) tokens.

A token reads ``dgw_<id>_<secret>``: the id finds the record, the secret proves
possession. Only a SHA-256 of the secret is stored (a token is 256 random bits, so a
slow password hash would add nothing), compared in constant time. The ``dgw_`` prefix
lets secret scanners, and our own tests, find a token that leaked into a log.

Roles: ``reader`` < ``operator`` < ``admin`` for the operators' API; ``node`` for a
gateway host of one shard (its reports, its first certificate); ``client`` for an
application's first certificate as one consumer (``identity``: its ``ACCOUNT-APP``, e.g.
for ``dgw client-proxy --join``). A one-time token is spent by its first use that is
allowed (a use that is refused spends nothing); an expired one is refused.

Join tokens (``node`` and ``client``) are one-time and expire after
``DEFAULT_JOIN_TTL`` unless whoever mints one asks otherwise: a join token found in a
shell history or a CI log must not sign certificates for a made-up fleet.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass, replace
from typing import Literal, Protocol

Role = Literal["reader", "operator", "admin", "node", "client"]
ROLES: tuple[Role, ...] = ("reader", "operator", "admin", "node", "client")
# Roles scoped to one thing, outside the operators' ranks: a shard's node, a consumer.
SCOPED: frozenset[Role] = frozenset({"node", "client"})
_RANK: dict[Role, int] = {"reader": 1, "operator": 2, "admin": 3}
PREFIX = "dgw_"
_TOKEN = re.compile(r"dgw_([0-9a-f]{12})_([A-Za-z0-9_-]{43})")
DEFAULT_JOIN_TTL = dt.timedelta(hours=1)


class TokenError(Exception):
    """A token that does not grant what was asked; the message is safe to show."""


@dataclass(frozen=True)
class TokenRecord:
    token_id: str
    name: str
    role: Role
    secret_sha256: str
    created_at: dt.datetime
    shard: str | None = None  # node tokens: the one shard they are for
    expires_at: dt.datetime | None = None
    one_time: bool = False
    used_at: dt.datetime | None = None
    revoked: bool = False
    identity: str | None = None  # client tokens: the consumer (ACCOUNT-APP) they make


class TokenStore(Protocol):
    """Where token records live (the config store's database in a server)."""

    def add(self, record: TokenRecord) -> None: ...
    def get(self, token_id: str) -> TokenRecord | None: ...
    def spend(self, token_id: str, now: dt.datetime) -> bool:
        """Mark a one-time token used; False if it already was (atomically)."""
        ...
    def revoke(self, token_id: str) -> bool: ...
    def list(self) -> list[TokenRecord]: ...


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def mint(
    name: str,
    role: Role,
    now: dt.datetime,
    *,
    shard: str | None = None,
    ttl: dt.timedelta | None = None,
    one_time: bool | None = None,
    identity: str | None = None,
) -> tuple[str, TokenRecord]:
    """A new token (shown once) and the record to store (which cannot rebuild it).
    ``ttl`` and ``one_time`` None: a join token's defaults (``join_defaults``)."""
    if role not in ROLES:
        raise TokenError(f"role {role!r} is not one of {', '.join(ROLES)}")
    if role == "node" and not shard:
        raise TokenError("a node token is for one shard: give --shard")
    if role != "node" and shard:
        raise TokenError(f"a {role} token is not scoped to a shard: drop --shard")
    if role == "client" and not identity:
        raise TokenError("a client token is for one consumer: give --identity ACCOUNT-APP")
    if role != "client" and identity:
        raise TokenError(f"a {role} token names no consumer: drop --identity")
    ttl, one_time = join_defaults(role, ttl, one_time)
    token_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    record = TokenRecord(
        token_id=token_id,
        name=name,
        role=role,
        secret_sha256=_digest(secret),
        created_at=now,
        shard=shard,
        expires_at=now + ttl if ttl else None,
        one_time=one_time,
        identity=identity,
    )
    return f"{PREFIX}{token_id}_{secret}", record


def join_defaults(
    role: Role, ttl: dt.timedelta | None, one_time: bool | None
) -> tuple[dt.timedelta | None, bool]:
    """A join token (``node``, ``client``) is one-time and lives ``DEFAULT_JOIN_TTL``
    unless asked otherwise; an operators' token is reusable and never expires unless
    asked otherwise."""
    if role in SCOPED:
        return (ttl or DEFAULT_JOIN_TTL), (True if one_time is None else one_time)
    return ttl, bool(one_time)


def parse(token: str) -> tuple[str, str]:
    """(id, secret) of a well-formed token; never echoes the token in the error."""
    m = _TOKEN.fullmatch(token.strip())
    if not m:
        raise TokenError("not a Data Gateway token (they look like dgw_<12 hex>_<43 chars>)")
    return m.group(1), m.group(2)


def grants(have: Role, need: Role, *, have_shard: str | None = None, shard: str | None = None) -> bool:
    """Whether a token of role ``have`` may act as ``need`` (for ``shard`` if given)."""
    if need in SCOPED or have in SCOPED:
        return have == need and (need != "node" or shard is None or have_shard == shard)
    return _RANK[have] >= _RANK[need]


def peek(store: TokenStore, token: str) -> TokenRecord | None:
    """The record of ``token`` if its secret matches, without spending or judging it
    (to refuse a token for the wrong scope before it is spent)."""
    try:
        token_id, secret = parse(token)
    except TokenError:
        return None
    record = store.get(token_id)
    if record is None or not hmac.compare_digest(record.secret_sha256, _digest(secret)):
        return None
    return record


def authenticate(
    store: TokenStore,
    token: str,
    need: Role,
    now: dt.datetime,
    *,
    shard: str | None = None,
) -> TokenRecord:
    """The record of a token that grants ``need``; spends it if it is one-time.
    Every refusal is a TokenError whose message names no secret."""
    return spend(store, judge(store, token, need, now, shard=shard), now)


def judge(
    store: TokenStore,
    token: str,
    need: Role,
    now: dt.datetime,
    *,
    shard: str | None = None,
) -> TokenRecord:
    """``authenticate`` without spending: the record of a valid token (known, not
    revoked, not expired, not used if one-time) that grants ``need``. A caller that
    authorizes more after this spends the token with ``spend`` only once it allows the
    request, so a refused request never spends a one-time token."""
    token_id, secret = parse(token)
    record = store.get(token_id)
    if record is None or not hmac.compare_digest(record.secret_sha256, _digest(secret)):
        raise TokenError("unknown token")
    if record.revoked:
        raise TokenError(f"token {record.name!r} was revoked")
    if record.expires_at is not None and now >= record.expires_at:
        raise TokenError(f"token {record.name!r} expired at {record.expires_at.isoformat()}")
    if not grants(record.role, need, have_shard=record.shard, shard=shard):
        scope = f" for shard {shard!r}" if shard else ""
        raise TokenError(f"token {record.name!r} ({record.role}) may not act as {need}{scope}")
    if record.one_time and record.used_at is not None:
        raise TokenError(_USED.format(name=record.name))
    return record


_USED = "token {name!r} was already used (it is one-time)"


def spend(store: TokenStore, record: TokenRecord, now: dt.datetime) -> TokenRecord:
    """Spend a judged one-time token (atomically: of two racing uses one fails); a
    reusable token is returned as it is."""
    if not record.one_time:
        return record
    if not store.spend(record.token_id, now):
        raise TokenError(_USED.format(name=record.name))
    return replace(record, used_at=now)


class MemoryTokenStore:
    """Tokens in memory: for tests and for a server without a data directory."""

    def __init__(self) -> None:
        self._records: dict[str, TokenRecord] = {}

    def add(self, record: TokenRecord) -> None:
        self._records[record.token_id] = record

    def get(self, token_id: str) -> TokenRecord | None:
        return self._records.get(token_id)

    def spend(self, token_id: str, now: dt.datetime) -> bool:
        record = self._records.get(token_id)
        if record is None or record.used_at is not None:
            return False
        self._records[token_id] = replace(record, used_at=now)
        return True

    def revoke(self, token_id: str) -> bool:
        record = self._records.get(token_id)
        if record is None:
            return False
        self._records[token_id] = replace(record, revoked=True)
        return True

    def list(self) -> list[TokenRecord]:
        return sorted(self._records.values(), key=lambda r: (r.created_at, r.token_id))
