"""The operators' shard routes: list, get, put, delete, wiring, history, versions,
rollback, and the OpenAPI document that describes them (``docs/openapi.yaml``).

Handlers are thin: they parse the request, call ``xds_server.changes`` (which loads,
validates, translates, stores with compare-and-set, then serves) and map its outcome
to the contract's statuses. Every mutation names its base version in ``If-Match``
(``"0"``: the shard must not exist yet); every mutation and every refused one is
recorded in the store's audit log with the caller (``request["principal"]``, set by
the auth middleware; ``anonymous`` without one).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from functools import cache
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web

from common.names import SHARD_RULE, is_shard
from xds_server.api import deploy_api
from xds_server.api.admin_http import read_json
from xds_server.api.auth import PRINCIPAL
from xds_server.changes import (
    BaseRequired,
    BatchItem,
    BatchRefused,
    Changes,
    Invalid,
    NodesConnected,
    Outcome,
    OwnedByFile,
    Preview,
    Request,
    is_file_owned,
    owner_path,
)
from xds_server.config import quote
from xds_server.ops import wiring
from xds_server.store import Conflict, NotFound, StoreError, Version

log = logging.getLogger("xds_server.api.shards_api")

CHANGES = web.AppKey("changes", Changes)

OPENAPI_PATH = Path(__file__).resolve().parents[2] / "docs" / "openapi.yaml"
HISTORY_PAGE = 100
HISTORY_PAGE_MAX = 1000
MESSAGE_CHARS = 1000
BATCH_MAX = 1000  # shards in one POST /v1/batch (the body limit bounds it too)
VERSION_MAX = 10**18 - 1  # what If-Match accepts: well inside SQLite's 64-bit integers
_IF_MATCH = re.compile(r'(?:W/)?"?(\d{1,18})"?')


class _Refusal(Exception):
    """A request refused before it reaches the store (bad body, missing If-Match)."""

    def __init__(self, status: int, body: dict[str, Any]):
        self.status, self.body = status, body
        super().__init__(str(body.get("error", "")))


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(data, status=status, headers=headers)


def _error(status: int, message: str, **extra: Any) -> web.Response:
    return _json({"error": message, **extra}, status)


def _actor(request: web.Request) -> str:
    """Who asked, as the audit log names callers everywhere (``auth.Principal.actor``)."""
    principal = request.get(PRINCIPAL)
    return principal.actor if principal is not None else "anonymous"


def _version_dict(meta: Version) -> dict[str, Any]:
    return {
        "version": meta.number,
        "author": meta.author,
        "time": meta.at.isoformat(),
        "message": meta.message,
        "source": meta.source,
        "hash": meta.content_hash,
        "deleted": meta.deleted,
    }


def store_summary(changes: Changes, shard: str) -> dict[str, Any]:
    """The store's side of a shard summary: version, owner, source, source_missing."""
    meta = changes.heads.get(shard)
    if meta is None:
        return {"version": None, "owner": None, "source_missing": False, "file": None}
    file_owned = is_file_owned(meta)
    return {
        "version": meta.number,
        "owner": "file" if file_owned else "api",
        "file": owner_path(meta) if file_owned else None,
        "version_source": meta.source,
        "author": meta.author,
        "updated_at": meta.at.isoformat(),
        "message": meta.message,
        "source_missing": shard in changes.missing,
    }


def shard_names(changes: Changes) -> list[str]:
    registry = changes.registry
    return sorted(set(registry.shards) | set(registry.rejections) | set(changes.heads))


# --- reads ------------------------------------------------------------------------------


async def history(request: web.Request) -> web.Response:
    changes = request.app[CHANGES]
    shard = request.match_info["shard"]
    try:
        limit = _int_param(request, "limit", HISTORY_PAGE, 1, HISTORY_PAGE_MAX)
        before = _int_param(request, "before", None, 1, VERSION_MAX)
    except _Refusal as e:
        return _json(e.body, e.status)
    versions = await changes.store.history(shard, limit=limit, before=before)
    if not versions and before is None:
        return _error(404, f"no shard {shard!r} in the store")
    last = versions[-1].number if versions else None
    more = len(versions) == limit and last is not None and last > 1
    return _json({
        "shard": shard,
        "versions": [_version_dict(v) for v in versions],
        "next_before": last if more else None,
    })  # fmt: skip


async def version(request: web.Request) -> web.Response:
    changes = request.app[CHANGES]
    shard = request.match_info["shard"]
    try:
        number = _int_param(request, "number", None, 1, VERSION_MAX, request.match_info)
    except _Refusal as e:
        return _json(e.body, e.status)
    entry = await changes.store.version(shard, number)
    if entry is None:
        return _error(404, f"shard {shard!r} has no version {number}")
    return _json({"shard": shard, **_version_dict(entry.meta), "owner": entry.meta.owner,
                  "yaml": entry.text})  # fmt: skip


async def openapi(request: web.Request) -> web.Response:
    try:
        return _json(openapi_document())
    except OSError as e:
        return _error(404, f"the OpenAPI document {OPENAPI_PATH} cannot be read: {e.strerror or e}")


@cache
def openapi_document() -> dict[str, Any]:
    """``docs/openapi.yaml`` as JSON (read once)."""
    data: dict[str, Any] = yaml.safe_load(OPENAPI_PATH.read_text())
    return data


# --- mutations ------------------------------------------------------------------------


async def put_shard(request: web.Request) -> web.Response:
    shard = request.match_info["shard"]

    async def run(changes: Changes, base: int | None, req: Request, body: _Body) -> Outcome:
        text = body.get("yaml")
        if not isinstance(text, str) or not text.strip():
            raise _Refusal(400, {"error": "the body needs \"yaml\": the shard file's text"})
        return await changes.put(shard, text, base, req)

    return await _mutate(request, shard, lambda _: "put", run)


async def delete_shard(request: web.Request) -> web.Response:
    shard = request.match_info["shard"]
    force = _flag(request, "force")

    async def run(changes: Changes, base: int | None, req: Request, body: _Body) -> Outcome:
        return await changes.delete(shard, base, req, force)

    return await _mutate(request, shard, lambda _: "delete", run, body_required=False)


async def post_wiring(request: web.Request) -> web.Response:
    shard = request.match_info["shard"]

    async def run(changes: Changes, base: int | None, req: Request, body: _Body) -> Outcome:
        try:
            op = wiring.parse_op(body)
        except wiring.WiringError as e:
            raise _Refusal(400, {"error": str(e), "problems": [{"path": e.path, "message": str(e)}]}) from None
        message = req.message or wiring.describe(op)
        return await changes.wiring(shard, op, base, Request(req.author, message, req.dry_run))

    def action(body: _Body) -> str:
        op = body.get("op")
        return f"wiring.{op}" if op in wiring.OPS else "wiring"

    return await _mutate(request, shard, action, run)


async def post_rollback(request: web.Request) -> web.Response:
    shard = request.match_info["shard"]

    async def run(changes: Changes, base: int | None, req: Request, body: _Body) -> Outcome:
        to = body.get("to")
        if isinstance(to, bool) or not isinstance(to, int) or not 1 <= to <= VERSION_MAX:
            raise _Refusal(400, {"error": "the body needs \"to\": the version number to roll back to"})
        return await changes.rollback(shard, to, base, req)

    return await _mutate(request, shard, lambda _: "rollback", run)


async def post_batch(request: web.Request) -> web.Response:
    """Several shards' next versions in one request, all stored or none (If-Match per
    shard is its ``base_version`` in the body)."""
    changes = request.app[CHANGES]
    dry_run = _flag(request, "dry_run")
    items: list[BatchItem] = []
    try:
        body = await _body(request, changes, True)
        message = body.get("message", "")
        if not isinstance(message, str) or len(message) > MESSAGE_CHARS:
            raise _Refusal(400, {"error": f"\"message\" must be text of at most {MESSAGE_CHARS} characters"})
        items = _batch_items(body.get("changes"))
        outcomes = await changes.put_many(items, Request(_actor(request), message, dry_run))
    except BatchRefused as e:
        answers = {shard: _refusal(error, shard, _base_of(items, shard)) for shard, error in e.refused.items()}
        statuses = {a.status for a in answers.values()}
        status = 400 if 400 in statuses else min(statuses)
        for shard, answer in answers.items():
            await _audit(request, changes, "batch.put", shard, _base_of(items, shard), None, answer)
        return _json({"error": f"{e}; nothing was stored",
                      "shards": {shard: a.body for shard, a in sorted(answers.items())}}, status)  # fmt: skip
    except Exception as e:
        refusal = _refusal(e, "-", None)
        await _audit(request, changes, "batch.put", None, None, None, refusal)
        return _json(refusal.body, refusal.status)
    if dry_run:
        return _json({"dry_run": True, "shards": {
            item.shard: {"config_diff": o.config_diff, "resources": o.resources.to_dict()}
            for item, o in zip(items, outcomes, strict=True) if isinstance(o, Preview)
        }})  # fmt: skip
    stored: dict[str, Any] = {}
    for item, outcome in zip(items, outcomes, strict=True):
        if isinstance(outcome, Preview):
            continue
        await _audit(request, changes, "batch.put", item.shard, item.base, outcome.version.number, None)
        stored[item.shard] = {"version": outcome.version.number, "previous_version": outcome.previous,
                              "unchanged": outcome.unchanged}
    return _json({"shards": stored})


def _batch_items(raw: object) -> list[BatchItem]:
    if not isinstance(raw, list) or not raw:
        raise _Refusal(400, {"error": "the body needs \"changes\": a list of {shard, yaml, base_version}"})
    if len(raw) > BATCH_MAX:
        raise _Refusal(400, {"error": f"at most {BATCH_MAX} shards in one batch, not {len(raw)}"})
    items: list[BatchItem] = []
    for i, entry in enumerate(raw):
        where = f"changes[{i}]"
        if not isinstance(entry, dict):
            raise _Refusal(400, {"error": f"{where} must be an object {{shard, yaml, base_version}}"})
        shard, text, base = entry.get("shard"), entry.get("yaml"), entry.get("base_version")
        if not is_shard(shard):
            raise _Refusal(400, {"error": f"{where}.shard {quote(str(shard))} is not a shard name"})
        if not isinstance(text, str) or not text.strip():
            raise _Refusal(400, {"error": f"{where}.yaml must be the shard file's text"})
        if isinstance(base, bool) or not isinstance(base, int) or not 0 <= base <= VERSION_MAX:
            raise _Refusal(400, {"error": f"{where}.base_version must be the version the change was "
                                 "made from (0: a new shard)"})  # fmt: skip
        items.append(BatchItem(shard, text, base))
    shards = [item.shard for item in items]
    if len(set(shards)) != len(shards):
        raise _Refusal(400, {"error": "each shard at most once in a batch"})
    return items


def _base_of(items: list[BatchItem], shard: str) -> int | None:
    return next((item.base for item in items if item.shard == shard), None)


_Body = dict[str, Any]
_Run = Callable[[Changes, int | None, Request, _Body], Awaitable[Outcome]]


async def _mutate(
    request: web.Request,
    shard: str,
    action: Callable[[_Body], str],
    run: _Run,
    body_required: bool = True,
) -> web.Response:
    """Parse what every mutation shares (body, If-Match, dry_run), run it, answer with
    the contract's status, and audit it (a dry run is not a mutation: audited only
    when refused)."""
    changes = request.app[CHANGES]
    dry_run = _flag(request, "dry_run")
    body: _Body = {}
    base: int | None = None
    try:
        if not is_shard(shard):
            raise _Refusal(400, {"error": f"shard name {quote(shard)} is not allowed: {SHARD_RULE}"})
        body = await _body(request, changes, body_required)
        message = body.get("message", "")
        if not isinstance(message, str) or len(message) > MESSAGE_CHARS:
            raise _Refusal(400, {"error": f"\"message\" must be text of at most {MESSAGE_CHARS} characters"})
        base = _base(request)
        outcome = await run(changes, base, Request(_actor(request), message, dry_run), body)
    except Exception as e:
        refusal = _refusal(e, shard, base)
        await _audit(request, changes, action(body), shard, base, None, refusal)
        owners = deploy_api.owners_of(changes, shard)
        if owners and refusal.status == 400:  # the shard's owners should hear of a refused change
            refusal.body["owners"] = owners
        return _json(refusal.body, refusal.status)
    if isinstance(outcome, Preview):
        return _json({"shard": shard, "dry_run": True, "config_diff": outcome.config_diff,
                      "resources": outcome.resources.to_dict()})  # fmt: skip
    await _audit(request, changes, action(body), shard, base, outcome.version.number, None)
    return _json({"shard": shard, "version": outcome.version.number,
                  "previous_version": outcome.previous, "unchanged": outcome.unchanged})  # fmt: skip


def _refusal(error: Exception, shard: str, base: int | None) -> _Refusal:
    """The contract's answer to a refused mutation (anything else is re-raised)."""
    match error:
        case _Refusal():
            return error
        case Invalid(problems=problems):
            return _Refusal(400, {"error": f"the change to shard {shard} is invalid; nothing was stored",
                                  "problems": [{"path": p.path, "message": p.message} for p in problems]})  # fmt: skip
        case OwnedByFile(path=path):
            return _Refusal(409, {"error": str(error), "file": path})
        case BaseRequired(current=current):
            return _Refusal(428, {"error": f"{error}: send it as If-Match: \"{current}\"",
                                  "current_version": current})  # fmt: skip
        case Conflict(current=meta):
            current = 0 if meta is None or meta.deleted else meta.number
            return _Refusal(409, {"error": f"shard {shard} is at version {current}, not {base}: read it "
                                  "again and retry from its current version",
                                  "current_version": current})  # fmt: skip
        case NodesConnected(nodes=nodes):
            return _Refusal(409, {"error": str(error), "nodes": sorted(nodes)})
        case NotFound():
            return _Refusal(404, {"error": str(error)})
        case StoreError():
            return _Refusal(503, {"error": f"the config store failed: {error}"})
    raise error


async def _audit(request: web.Request, changes: Changes, action: str, shard: str | None, base: int | None,
                 new_version: int | None, refusal: _Refusal | None) -> None:  # fmt: skip
    reason = "" if refusal is None else f"{refusal.status} {str(refusal.body.get('error', ''))[:400]}"
    try:
        await changes.store.append_audit(
            actor=_actor(request), action=action, shard=shard, base_version=base,
            new_version=new_version, accepted=refusal is None, reason=reason,
        )  # fmt: skip
    except StoreError as e:
        log.error("event=audit_failed shard=%s action=%s error=%s", shard, action, e)


async def _body(request: web.Request, changes: Changes, required: bool) -> dict[str, Any]:
    if not request.can_read_body:
        if required:
            raise _Refusal(400, {"error": "the request needs a JSON body"})
        return {}
    try:
        body = await read_json(request, changes.limits)
    except TimeoutError:
        raise _Refusal(408, {"error": "the request body did not arrive in time"}) from None
    except ValueError as e:
        raise _Refusal(400, {"error": f"the body is not JSON: {quote(str(e), 200)}"}) from None
    if not isinstance(body, dict):
        raise _Refusal(400, {"error": "the body must be a JSON object"})
    return body


def _base(request: web.Request) -> int | None:
    """The base version named by ``If-Match`` (None: no If-Match)."""
    header = request.headers.get("If-Match")
    if header is None:
        return None
    m = _IF_MATCH.fullmatch(header.strip())
    if not m:
        raise _Refusal(400, {"error": f"If-Match {quote(header)} must be a version number in quotes, "
                             'e.g. If-Match: "3" ("0": the shard must not exist yet)'})  # fmt: skip
    return int(m.group(1))


def _flag(request: web.Request, name: str) -> bool:
    return request.query.get(name, "").lower() in ("1", "true", "yes")


def _int_param(request: web.Request, name: str, default: int | None, low: int, high: int,
               values: Mapping[str, str] | None = None) -> Any:  # fmt: skip
    """A whole number from the query (or ``values``) within low..high; 400 otherwise."""
    raw = (request.query if values is None else values).get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        raise _Refusal(400, {"error": f"{name} {quote(raw)} is not allowed: a number {low}-{high}"})
    return value


def register(app: web.Application, changes: Changes) -> None:
    """Add the store's routes (the shard reads with the store's fields are in admin)."""
    app[CHANGES] = changes
    app.router.add_put("/v1/shards/{shard}", put_shard)
    app.router.add_delete("/v1/shards/{shard}", delete_shard)
    app.router.add_post("/v1/shards/{shard}/wiring", post_wiring)
    app.router.add_get("/v1/shards/{shard}/history", history)
    app.router.add_get("/v1/shards/{shard}/versions/{number}", version)
    app.router.add_post("/v1/shards/{shard}/rollback", post_rollback)
    app.router.add_post("/v1/batch", post_batch)
    app.router.add_get("/v1/openapi.json", openapi)
