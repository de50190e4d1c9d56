"""Who may call what on the admin API: bearer tokens, a role per route, an audit trail.

``auth_middleware(tokens, audit)`` runs before every handler. It finds the role the
matched route needs in ``ROUTE_ROLES`` (keyed by method and route pattern, so a new
route without an entry needs ``admin`` for a mutation and ``reader`` for a read:
nothing is open by mistake), checks ``Authorization: Bearer <token>`` and hands the
handler a ``Principal`` in ``request["principal"]``. No or a bad token is 401, a role
too low 403, both as ``{"error": "..."}``; every refused mutation goes to the audit
log (the config store's ``append_audit``). Handlers read the caller as
``request[PRINCIPAL]`` (also ``request["principal"]``, as the API contract names it),
and audit what they accept or refuse themselves (they know the versions).

Roles (``xds_server.security.tokens``): ``reader`` reads everything but tokens and
the audit log; ``operator`` also changes shards; ``admin`` does everything; ``node``
(shard-scoped) only posts its own shard's reports.

Also here: the token routes (``/v1/tokens``, ``/v1/audit``, admin only) and the
first start's admin token (``ensure_admin_token``).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import re
import warnings
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from aiohttp import web

from common.budget import Budget
from common.files import write_private
from common.names import SHARD_RULE, TOKEN_NAME_RULE, is_shard, is_token_name
from xds_server import metrics
from xds_server.api.admin_http import TRUSTED, parse_json
from xds_server.config import quote
from xds_server.security.identity import IdentityError, consumer_id
from xds_server.security.tokens import (
    ROLES,
    SCOPED,
    Role,
    TokenError,
    TokenRecord,
    TokenStore,
    grants,
    judge,
    mint,
    parse,
    spend,
)
from xds_server.store.base import AuditLog, StoreError

log = logging.getLogger("xds_server.api.auth")

Need = Literal["open", "reader", "operator", "admin", "node"]
"""What a route needs: nothing, a role (or higher), or a node token of the shard the
request is about (an admin token will do as well)."""

ADMIN_TOKEN_FILE = "admin.token"

# (method, route pattern) → what it needs. HEAD follows GET.
ROUTE_ROLES: dict[tuple[str, str], Need] = {
    ("GET", "/healthz"): "open",
    ("GET", "/metrics"): "reader",  # open with --metrics-public
    ("GET", "/v1/openapi.json"): "reader",
    ("GET", "/v1/shards"): "reader",
    ("GET", "/v1/shards/{shard}"): "reader",
    ("POST", "/v1/batch"): "operator",
    ("PUT", "/v1/shards/{shard}"): "operator",
    ("DELETE", "/v1/shards/{shard}"): "operator",
    ("POST", "/v1/shards/{shard}/wiring"): "operator",
    ("GET", "/v1/shards/{shard}/history"): "reader",
    ("GET", "/v1/shards/{shard}/versions/{number}"): "reader",
    ("GET", "/v1/shards/{shard}/versions/{n}"): "reader",
    ("POST", "/v1/shards/{shard}/rollback"): "operator",
    ("GET", "/v1/status"): "reader",
    ("GET", "/v1/replicas"): "reader",
    ("GET", "/v1/stats/{shard}"): "reader",
    ("GET", "/v1/nodes"): "reader",
    ("GET", "/v1/discovery/{address}"): "reader",
    ("POST", "/v1/reports"): "node",
    ("GET", "/v1/artifacts"): "reader",
    ("GET", "/v1/artifacts/{kind}/{name}"): "reader",
    ("POST", "/v1/artifacts/{kind}/{name}"): "operator",
    ("GET", "/v1/shards/{shard}/plan"): "reader",
    ("POST", "/v1/plans"): "operator",  # it spends the planner worker's CPU
    ("GET", "/v1/rollouts"): "reader",
    ("POST", "/v1/rollouts"): "operator",
    ("GET", "/v1/rollouts/{rollout}"): "reader",
    ("POST", "/v1/rollouts/{rollout}/{action}"): "operator",
    ("GET", "/v1/migrations"): "reader",
    ("GET", "/v1/migrations/{shard}"): "reader",
    ("POST", "/v1/migrations/{shard}/start"): "operator",
    ("PUT", "/v1/migrations/{shard}/backfill"): "operator",
    ("PUT", "/v1/migrations/{shard}/verify"): "operator",
    ("POST", "/v1/migrations/{shard}/throttle"): "operator",
    ("POST", "/v1/migrations/{shard}/promote"): "operator",
    ("POST", "/v1/migrations/{shard}/rollback"): "operator",
    ("POST", "/v1/migrations/{shard}/finish"): "operator",
    ("GET", "/v1/audit"): "admin",
    ("GET", "/v1/tokens"): "admin",
    ("POST", "/v1/tokens"): "admin",
    ("DELETE", "/v1/tokens/{token_id}"): "admin",
    ("GET", "/v1/revocations"): "admin",
    ("PUT", "/v1/revocations/{shard}/{node}"): "admin",
    ("DELETE", "/v1/revocations/{shard}/{node}"): "admin",
}

_READS = frozenset({"GET", "HEAD", "OPTIONS"})


def required(method: str, pattern: str | None) -> Need:
    """What a request needs; a route missing from the table is not open."""
    method = "GET" if method == "HEAD" else method
    if pattern is not None and (method, pattern) in ROUTE_ROLES:
        return ROUTE_ROLES[(method, pattern)]
    return "reader" if method in _READS else "admin"


@dataclass(frozen=True)
class Principal:
    """Who is calling: a token's name and role (and shard, for a node token)."""

    name: str
    role: Role
    shard: str | None = None
    token_id: str = ""

    @property
    def actor(self) -> str:
        """As the audit log names it: ``name (token id)`` (names need not be unique)."""
        return f"{self.name} ({self.token_id})" if self.token_id else self.name


PRINCIPAL = web.RequestKey("principal", Principal)


def set_principal(request: web.Request, principal: Principal) -> None:
    """``request[PRINCIPAL]``, and ``request["principal"]`` as the API contract names it
    (aiohttp warns about plain string keys; the contract predates its typed keys)."""
    request[PRINCIPAL] = principal
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        request["principal"] = principal


@dataclass(frozen=True)
class Access:
    """What the middleware and the token routes work with (one per app)."""

    tokens: TokenStore
    audit: AuditLog
    metrics_public: bool = False
    body_timeout_s: float = 10.0
    clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC)
    json_depth: int = 32  # Limits.admin_json_depth


ACCESS = web.AppKey("access", Access)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _error(status: int, message: str, **extra: Any) -> web.Response:
    headers = {"WWW-Authenticate": 'Bearer realm="dgw"'} if status == 401 else None
    return web.json_response({"error": message, **extra}, status=status, headers=headers)


def if_match_version(request: web.Request) -> int | None:
    """The base version an ``If-Match: "<n>"`` names, or None."""
    m = re.fullmatch(r'\s*(?:W/)?"?(\d{1,18})"?\s*', request.headers.get("If-Match", ""))
    return int(m.group(1)) if m else None


async def _report_shard(request: web.Request, timeout_s: float, json_depth: int) -> str | None:
    """The shard a report names (the body stays cached for the handler)."""
    try:
        async with asyncio.timeout(timeout_s):
            body = parse_json(await request.read(), json_depth)
    except (TimeoutError, ValueError):
        return None
    shard = body.get("shard") if isinstance(body, dict) else None
    return shard if isinstance(shard, str) else None


class RefusalBudget(Budget):
    """How many refused mutations are audited one by one: at most ``per_window`` a
    window; the rest are counted and written as one entry when the next window opens.
    A caller hammering the API with bad or no tokens cannot grow the audit log faster
    than this, and the log still says how much was refused."""


def auth_middleware(
    tokens: TokenStore, audit: AuditLog, *, metrics_public: bool = False,
    body_timeout_s: float = 10.0, clock: Callable[[], dt.datetime] | None = None,
    refusal_budget: RefusalBudget | None = None, json_depth: int = 32,
) -> Any:  # fmt: skip
    """The aiohttp middleware: a ``Principal`` for every allowed request, 401/403 else."""
    now = clock or (lambda: dt.datetime.now(dt.UTC))
    budget = refusal_budget or RefusalBudget()

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        resource = request.match_info.route.resource
        pattern = resource.canonical if resource is not None else None
        if pattern is None:  # 404 / 405: nothing to protect, aiohttp answers
            return await handler(request)
        need = required(request.method, pattern)
        if need == "open" or (pattern == "/metrics" and metrics_public):
            return await handler(request)
        shard = request.match_info.get("shard")
        principal: Principal | None = None
        at = now()
        record, status, message = _identify(tokens, request, at)
        if record is not None:
            principal = Principal(record.name, record.role, record.shard, record.token_id)
            if need == "node" and record.role == "node":
                # Read only once the caller is known: nobody unknown makes us read a body.
                shard = await _report_shard(request, body_timeout_s, json_depth)
            status, message = _authorize(record, need, pattern, request.method, shard)
            if status == 200:
                # Spent only by a request it is allowed to make (a 403 spends nothing).
                status, message = _spend(tokens, record, at)
        if status != 200 or principal is None:
            metrics.HTTP_REFUSED.labels(str(status)).inc()
            if request.method not in _READS:
                itemize, left_out = budget.take()
                if left_out:
                    await _audit(audit, actor="-", action="refusals not itemized", shard=None,
                                 base_version=None, new_version=None, accepted=False,
                                 reason=f"{left_out} more refused mutations in the last "
                                        f"{budget.window_s:.0f} s (audit budget {budget.per_window})")  # fmt: skip
                if itemize:
                    await _audit_refusal(audit, request, pattern, shard, principal, status, message)
            return _error(status, message)
        set_principal(request, principal)
        trusted = request.app.get(TRUSTED)
        if trusted is not None:
            trusted.trust(request.transport)  # never closed to make room for others
        return await handler(request)

    return middleware


def _identify(
    tokens: TokenStore, request: web.Request, now: dt.datetime
) -> tuple[TokenRecord | None, int, str]:
    """The caller's token record, or why not (401)."""
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if not header:
        return None, 401, ("this route needs a token: send 'Authorization: Bearer <token>' "
                           "(dgw --token, $DGW_TOKEN; an admin makes one with 'dgw token create')")  # fmt: skip
    if scheme.lower() != "bearer" or not token.strip():
        return None, 401, "the Authorization header must be 'Bearer <token>'"
    try:
        token_id, _ = parse(token)
        record = tokens.get(token_id)
        if record is None:
            raise TokenError("unknown token")
        # Who the caller is (401 if not valid), before whether that is enough (403).
        return judge(tokens, token, record.role, now, shard=record.shard), 200, ""
    except TokenError as e:
        return None, 401, str(e)


def _spend(tokens: TokenStore, record: TokenRecord, now: dt.datetime) -> tuple[int, str]:
    try:
        spend(tokens, record, now)
    except TokenError as e:
        return 401, str(e)
    except StoreError as e:  # a replica cut off from etcd cannot spend a one-time token
        return 503, f"the one-time token could not be spent now: {e}; try again"
    return 200, ""


def _authorize(
    record: TokenRecord, need: Need, pattern: str, method: str, shard: str | None
) -> tuple[int, str]:
    if _allows(record, need, shard):
        return 200, ""
    if need == "node":
        scope = f"shard {shard!r}" if shard else "a report that names no shard"
        return 403, (f"token {record.name!r} ({_scope(record)}) may not report for {scope}; "
                     "a node token reports for its own shard only")  # fmt: skip
    return 403, (f"token {record.name!r} is a {_scope(record)} token; "
                 f"{method} {pattern} needs {need} or higher")  # fmt: skip


def _scope(record: TokenRecord) -> str:
    return f"node token of shard {record.shard!r}" if record.role == "node" else record.role


def _allows(record: TokenRecord, need: Need, shard: str | None) -> bool:
    if need == "open":
        return True
    if need == "node":
        if record.role == "admin":
            return True
        return shard is not None and grants(record.role, "node", have_shard=record.shard, shard=shard)
    return record.role not in SCOPED and grants(record.role, need)


async def _audit_refusal(
    audit: AuditLog, request: web.Request, pattern: str, shard: str | None,
    principal: Principal | None, status: int, message: str,
) -> None:  # fmt: skip
    await _audit(
        audit,
        actor=principal.actor if principal else "anonymous",
        action=f"{request.method} {pattern}",
        shard=shard,
        base_version=if_match_version(request),
        new_version=None,
        accepted=False,
        reason=f"{status}: {message}",
    )


async def _audit(audit: AuditLog, **entry: Any) -> None:
    with metrics.STORE_WRITE_SECONDS.labels("audit").time():
        await audit.append_audit(**entry)


# --- the first start ----------------------------------------------------------------


def ensure_admin_token(tokens: TokenStore, data_dir: Path, now: dt.datetime) -> Path | None:
    """With no token at all, make an admin token and save it to ``data_dir/admin.token``
    (0600). Returns the file's path when it made one. Only the path is ever logged."""
    if tokens.list():
        return None
    token, record = mint("admin", "admin", now)
    path = data_dir / ADMIN_TOKEN_FILE
    write_private(path, (token + "\n").encode())
    tokens.add(record)
    log.warning("event=admin_token_created token_id=%s path=%s "
                "hint=\"dgw reads it when it talks to this server; keep it secret\"",
                record.token_id, path)  # fmt: skip
    return path


# --- token and audit routes (admin) -------------------------------------------------

_MAX_TTL_S = 10 * 365 * 86400


def token_view(record: TokenRecord) -> dict[str, Any]:
    """A token as listed: everything but its digest."""

    def iso(t: dt.datetime | None) -> str | None:
        return t.isoformat() if t else None

    return {
        "id": record.token_id, "name": record.name, "role": record.role, "shard": record.shard,
        "identity": record.identity,
        "created_at": record.created_at.isoformat(), "expires_at": iso(record.expires_at),
        "one_time": record.one_time, "used_at": iso(record.used_at), "revoked": record.revoked,
    }  # fmt: skip


def _principal(request: web.Request) -> Principal:
    return request[PRINCIPAL]  # the auth middleware runs before every handler


class _BadRequest(Exception):
    pass


def _token_request(body: Any) -> tuple[str, Role, str | None, dt.timedelta | None, bool | None, str | None]:
    if not isinstance(body, dict):
        raise _BadRequest('the body must be a JSON object: {"role": ..., "name": ...}')
    unknown = sorted(set(body) - {"role", "name", "shard", "ttl_s", "one_time", "identity"})
    if unknown:
        raise _BadRequest(f"unknown field {unknown[0]!r}; allowed: role, name, shard, ttl_s, one_time, identity")
    identity = body.get("identity")
    if identity is not None:
        try:
            consumer_id("account-app", identity if isinstance(identity, str) else "")
        except IdentityError as e:
            raise _BadRequest(f"identity: {e}") from None
    role, name, shard = body.get("role"), body.get("name"), body.get("shard")
    if role not in ROLES:
        raise _BadRequest(f"role must be one of {', '.join(ROLES)}, not {str(role)[:80]!r}")
    if not is_token_name(name):
        raise _BadRequest(f"name must be {TOKEN_NAME_RULE}")
    if shard is not None and not is_shard(shard):
        raise _BadRequest(f"shard must be a shard name: {SHARD_RULE}")
    ttl_s = body.get("ttl_s")
    ttl = None
    if ttl_s is not None:
        if isinstance(ttl_s, bool) or not isinstance(ttl_s, int | float) or not 0 < ttl_s <= _MAX_TTL_S:
            raise _BadRequest(f"ttl_s must be a number of seconds from 1 to {_MAX_TTL_S}")
        ttl = dt.timedelta(seconds=ttl_s)
    one_time = body.get("one_time")
    if one_time is not None and not isinstance(one_time, bool):
        raise _BadRequest("one_time must be true or false")
    return name, role, shard, ttl, one_time, identity


async def create_token(request: web.Request) -> web.Response:
    access = request.app[ACCESS]
    who = _principal(request)
    try:
        async with asyncio.timeout(access.body_timeout_s):
            body = parse_json(await request.read(), access.json_depth)
        name, role, shard, ttl, one_time, identity = _token_request(body)
        token, record = mint(name, role, access.clock(), shard=shard, ttl=ttl, one_time=one_time,
                             identity=identity)  # fmt: skip
    except TimeoutError:
        return _error(408, "the request body did not arrive in time")
    except (ValueError, _BadRequest, TokenError) as e:
        message = str(e) if not isinstance(e, ValueError) else f"the body is not JSON: {quote(str(e), 200)}"
        await _audit(
            access.audit, actor=who.actor, action="token.create", shard=None, base_version=None,
            new_version=None, accepted=False, reason=f"400: {message}",
        )  # fmt: skip
        return _error(400, message)
    try:
        access.tokens.add(record)
    except StoreError as e:  # a replica cut off from etcd (tokens are shared there)
        return _error(503, f"the token was not stored: {e}")
    await _audit(
        access.audit, actor=who.actor, action=f"token.create {record.token_id} {role} {name}",
        shard=shard, base_version=None, new_version=None, accepted=True,
    )  # fmt: skip
    log.info("event=token_created by=%s token_id=%s role=%s name=%s shard=%s",
             who.actor, record.token_id, role, name, shard or "-")  # fmt: skip
    return web.json_response({"id": record.token_id, "token": token, **token_view(record)})


async def list_tokens(request: web.Request) -> web.Response:
    tokens = request.app[ACCESS].tokens.list()
    return web.json_response({"tokens": [token_view(t) for t in tokens]})


async def revoke_token(request: web.Request) -> web.Response:
    access = request.app[ACCESS]
    who = _principal(request)
    token_id = request.match_info["token_id"]
    record = access.tokens.get(token_id)
    try:
        revoked = record is not None and access.tokens.revoke(token_id)
    except StoreError as e:
        return _error(503, f"the token was not revoked: {e}")
    if record is None or not revoked:
        await _audit(
            access.audit, actor=who.actor, action=f"token.revoke {token_id[:16]}", shard=None,
            base_version=None, new_version=None, accepted=False, reason="404: no such token",
        )  # fmt: skip
        return _error(404, f"no token with id {token_id[:16]!r}; 'dgw token list' shows them")
    await _audit(
        access.audit, actor=who.actor, action=f"token.revoke {token_id} {record.role} {record.name}",
        shard=record.shard, base_version=None, new_version=None, accepted=True,
    )  # fmt: skip
    log.info("event=token_revoked by=%s token_id=%s", who.actor, token_id)
    return web.json_response({"id": token_id, "revoked": True})


def _int_param(request: web.Request, name: str, default: int | None, low: int, high: int) -> int | None:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise _BadRequest(f"{name} must be a whole number from {low} to {high}") from None
    if not low <= value <= high:
        raise _BadRequest(f"{name} must be a whole number from {low} to {high}")
    return value


async def audit_log(request: web.Request) -> web.Response:
    access = request.app[ACCESS]
    try:
        limit = _int_param(request, "limit", 100, 1, 1000) or 100
        before = _int_param(request, "before", None, 1, 2**62)
    except _BadRequest as e:
        return _error(400, str(e))
    entries = await access.audit.audit_log(limit=limit, before=before, shard=request.query.get("shard"))
    return web.json_response({
        "entries": [
            {"id": e.id, "at": e.at.isoformat(), "actor": e.actor, "action": e.action,
             "shard": e.shard, "base_version": e.base_version, "new_version": e.new_version,
             "accepted": e.accepted, "reason": e.reason}
            for e in entries
        ],
        "next_before": entries[-1].id if len(entries) == limit else None,
    })  # fmt: skip


def install(app: web.Application, access: Access) -> None:
    """The middleware and the token and audit routes, on an app not yet started."""
    app[ACCESS] = access
    app.middlewares.append(auth_middleware(
        access.tokens, access.audit, metrics_public=access.metrics_public,
        body_timeout_s=access.body_timeout_s, clock=access.clock, json_depth=access.json_depth,
    ))  # fmt: skip
    app.router.add_get("/v1/tokens", list_tokens)
    app.router.add_post("/v1/tokens", create_token)
    app.router.add_delete("/v1/tokens/{token_id}", revoke_token)
    app.router.add_get("/v1/audit", audit_log)
