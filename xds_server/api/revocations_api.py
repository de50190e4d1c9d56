"""The admin routes of node revocation (``security/revocations.py``), admin only:

- ``GET /v1/revocations``: every revoked node;
- ``PUT /v1/revocations/{shard}/{node}`` (``{"reason": "..."}``, optional): revoke it,
  ending its streams at once; revoking it again keeps the first revocation;
- ``DELETE /v1/revocations/{shard}/{node}``: reinstate it (it needs a new join token).

Both mutations are audited with the caller, like every other.
"""

from __future__ import annotations

from dataclasses import asdict

from aiohttp import web

from common.text import printable
from xds_server.api.admin_http import read_json
from xds_server.api.auth import PRINCIPAL
from xds_server.config import quote
from xds_server.security.revocations import Revocations
from xds_server.settings import Limits
from xds_server.store import AuditEntry, StoreError
from xds_server.store.base import AuditLog

REVOCATIONS = web.AppKey("revocations", Revocations)
AUDIT = web.AppKey("revocations_audit", AuditLog)
LIMITS = web.AppKey("revocations_limits", Limits)
REASON_CHARS = 500


async def list_revocations(request: web.Request) -> web.Response:
    return web.json_response({"revocations": [asdict(r) for r in request.app[REVOCATIONS].list()]})


async def revoke(request: web.Request) -> web.Response:
    shard, node = request.match_info["shard"], request.match_info["node"]
    actor = request[PRINCIPAL].actor
    reason = ""
    if request.can_read_body:
        try:
            body = await read_json(request, request.app[LIMITS])
        except (TimeoutError, ValueError) as e:
            return await _refused(request, f"node.revoke {node}", shard, 400, f"the body is not JSON: {quote(str(e), 200)}")
        given = body.get("reason", "") if isinstance(body, dict) else None
        if not isinstance(given, str) or len(given) > REASON_CHARS:
            return await _refused(request, f"node.revoke {node}", shard, 400,
                                  f'the body may hold "reason": text of at most {REASON_CHARS} characters')
        reason = printable(given)
    try:
        revocation, new = await request.app[REVOCATIONS].revoke(shard, node, actor, reason)
    except StoreError as e:
        return await _refused(request, f"node.revoke {node}", shard, 503, f"the config store failed: {e}")
    await _audit(request, f"node.revoke {node}", shard, True, "" if new else "already revoked")
    return web.json_response({**asdict(revocation), "new": new})


async def reinstate(request: web.Request) -> web.Response:
    shard, node = request.match_info["shard"], request.match_info["node"]
    try:
        found = await request.app[REVOCATIONS].reinstate(shard, node)
    except StoreError as e:
        return await _refused(request, f"reinstate {shard}/{node}", shard, 503, f"the config store failed: {e}")
    if not found:
        return await _refused(request, f"node.reinstate {node}", shard, 404,
                              f"node {shard}/{node} is not revoked ('dgw node revocations' lists them)")
    await _audit(request, f"node.reinstate {node}", shard, True, "")
    return web.json_response({"shard": shard, "node": node, "reinstated": True})


async def _refused(request: web.Request, action: str, shard: str, status: int, message: str) -> web.Response:
    await _audit(request, action, shard, False, f"{status}: {message}")
    return web.json_response({"error": message}, status=status)


async def _audit(request: web.Request, action: str, shard: str, accepted: bool, reason: str) -> AuditEntry:
    return await request.app[AUDIT].append_audit(
        actor=request[PRINCIPAL].actor, action=action, shard=shard, base_version=None,
        new_version=None, accepted=accepted, reason=reason,
    )  # fmt: skip


def register(app: web.Application, revocations: Revocations, audit: AuditLog, limits: Limits) -> None:
    app[REVOCATIONS], app[AUDIT], app[LIMITS] = revocations, audit, limits
    app.router.add_get("/v1/revocations", list_revocations)
    app.router.add_put("/v1/revocations/{shard}/{node}", revoke)
    app.router.add_delete("/v1/revocations/{shard}/{node}", reinstate)
