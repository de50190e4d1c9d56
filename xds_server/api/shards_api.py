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

import json
import re
from collections.abc import Awaitable, Callable
from functools import cache
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web

from xds_server.api.admin_http import read_json
from xds_server.changes import (
    Changes,
    Done,
    Invalid,
    NodesConnected,
    Outcome,
    OwnedByFile,
    Request,
    is_file_owned,
    owner_path,
)
from xds_server.config import quote
from xds_server.ops import wiring
from xds_server.sources.config_dir import SHARD_NAME
from xds_server.store import Conflict, NotFound, StoreError, Version

CHANGES = web.AppKey("changes", Changes)

OPENAPI_PATH = Path(__file__).resolve().parents[2] / "docs" / "openapi.yaml"
HISTORY_PAGE = 100
HISTORY_PAGE_MAX = 1000
MESSAGE_CHARS = 1000
_SHARD = re.compile(rf"^{SHARD_NAME}$")
_IF_MATCH = re.compile(r'^(?:W/)?"?(\d{1,18})"?$')


class _Refusal(Exception):
    """A request refused before it reaches the store (bad body, missing If-Match)."""

    def __init__(self, status: int, body: dict[str, Any]):
        self.status, self.body = status, body
        super().__init__(str(body.get("error", "")))


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(data, status=status, headers=headers,
                             dumps=lambda d: json.dumps(d, indent=1))  # fmt: skip


def _error(status: int, message: str, **extra: Any) -> web.Response:
    return _json({"error": message, **extra}, status)


def _actor(request: web.Request) -> str:
    principal = request.get("principal")
    name = getattr(principal, "name", None)
    return str(name) if name else "anonymous"


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
        before = _int_param(request, "before", None, 1, None)
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
        number = int(request.match_info["number"])
    except ValueError:
        return _error(400, f"version {quote(request.match_info['number'])} must be a number")
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

    async def run(changes: Changes, base: int, req: Request, body: dict[str, Any]) -> Outcome:
        text = body.get("yaml")
        if not isinstance(text, str) or not text.strip():
            raise _Refusal(400, {"error": "the body needs \"yaml\": the shard file's text"})
        return await changes.put(shard, text, base, req)

    return await _mutate(request, "put", shard, run)


async def delete_shard(request: web.Request) -> web.Response:
    shard = request.match_info["shard"]
    force = _flag(request, "force")

    async def run(changes: Changes, base: int, req: Request, body: dict[str, Any]) -> Outcome:
        return await changes.delete(shard, base, req, force)

    return await _mutate(request, "delete", shard, run, body_required=False)


async def post_wiring(request: web.Request) -> web.Response:
    shard = request.match_info["shard"]
    action = "wiring"

    async def run(changes: Changes, base: int, req: Request, body: dict[str, Any]) -> Outcome:
        nonlocal action
        try:
            op = wiring.parse_op(body)
        except wiring.WiringError as e:
            raise _Refusal(400, {"error": str(e), "problems": [{"path": e.path, "message": str(e)}]}) from None
        action = wiring.action(op)
        message = req.message or wiring.describe(op)
        return await changes.wiring(shard, op, base, Request(req.author, message, req.dry_run))

    return await _mutate(request, lambda: action, shard, run)


async def post_rollback(request: web.Request) -> web.Response:
    shard = request.match_info["shard"]

    async def run(changes: Changes, base: int, req: Request, body: dict[str, Any]) -> Outcome:
        to = body.get("to")
        if isinstance(to, bool) or not isinstance(to, int) or to < 1:
            raise _Refusal(400, {"error": "the body needs \"to\": the version number to roll back to"})
        return await changes.rollback(shard, to, base, req)

    return await _mutate(request, "rollback", shard, run)


_Run = Callable[[Changes, int, Request, dict[str, Any]], Awaitable[Outcome]]


async def _mutate(
    request: web.Request,
    action: str | Callable[[], str],
    shard: str,
    run: _Run,
    body_required: bool = True,
) -> web.Response:
    """Parse what every mutation shares (body, If-Match, dry_run), run it, answer with
    the contract's status, and audit it (a dry run is not a mutation: not audited)."""
    changes = request.app[CHANGES]
    dry_run = _flag(request, "dry_run")
    base: int | None = None
    try:
        if not _SHARD.match(shard):
            raise _Refusal(400, {"error": f"shard name {quote(shard)} is not allowed: an ASCII letter "
                                 "or digit, then up to 62 letters, digits, _ . or -"})  # fmt: skip
        body = await _body(request, changes, body_required)
        message = body.get("message", "")
        if not isinstance(message, str) or len(message) > MESSAGE_CHARS:
            raise _Refusal(400, {"error": f"\"message\" must be text of at most {MESSAGE_CHARS} characters"})
        base = await _base(request, changes, shard)
        outcome = await run(changes, base, Request(_actor(request), message, dry_run), body)
    except _Refusal as e:
        response = _json(e.body, e.status)
    except Invalid as e:
        problems = [{"path": p.path, "message": p.message} for p in e.problems]
        response = _json({"error": f"the change to shard {shard} is invalid; nothing was stored",
                          "problems": problems}, 400)  # fmt: skip
    except OwnedByFile as e:
        response = _error(409, str(e), file=e.path)
    except Conflict as e:
        current = 0 if e.current is None or e.current.deleted else e.current.number
        response = _error(409, f"shard {shard} is at version {current}, not {base}: read it again "
                          "and retry from its current version", current_version=current)  # fmt: skip
    except NodesConnected as e:
        response = _error(409, str(e), nodes=sorted(e.nodes))
    except NotFound as e:
        response = _error(404, str(e))
    except StoreError as e:
        response = _error(503, f"the config store failed: {e}")
    else:
        if isinstance(outcome, Done):
            response = _json({"shard": shard, "version": outcome.version.number,
                              "previous_version": outcome.previous})  # fmt: skip
        else:
            response = _json({"shard": shard, "dry_run": True, "config_diff": outcome.config_diff,
                              "resources": outcome.resources.to_dict()})  # fmt: skip
    if not dry_run or response.status >= 400:
        await _audit(request, changes, action if isinstance(action, str) else action(), shard,
                     base, response)  # fmt: skip
    return response


async def _audit(request: web.Request, changes: Changes, action: str, shard: str,
                 base: int | None, response: web.Response) -> None:  # fmt: skip
    accepted = response.status < 400
    body = json.loads(response.text or "{}") if response.text else {}
    try:
        await changes.store.append_audit(
            actor=_actor(request), action=action,
            shard=shard, base_version=base,
            new_version=body.get("version") if accepted else None, accepted=accepted,
            reason="" if accepted else f"{response.status} {str(body.get('error', ''))[:400]}",
        )  # fmt: skip
    except StoreError:
        pass  # the answer stands; the store's failure is in the log of the write that failed


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


async def _base(request: web.Request, changes: Changes, shard: str) -> int:
    """The base version from ``If-Match``; a shard that exists needs one (428)."""
    header = request.headers.get("If-Match")
    if header is None:
        head = await changes.store.get(shard)
        if head is None:
            return 0
        raise _Refusal(428, {"error": f"shard {shard} exists: name the version you changed in "
                             f"If-Match (its current version is {head.meta.number})",
                             "current_version": head.meta.number})  # fmt: skip
    m = _IF_MATCH.match(header.strip())
    if not m:
        raise _Refusal(400, {"error": f"If-Match {quote(header)} must be a version number in quotes, "
                             'e.g. If-Match: "3" ("0": the shard must not exist yet)'})  # fmt: skip
    return int(m.group(1))


def _flag(request: web.Request, name: str) -> bool:
    return request.query.get(name, "").lower() in ("1", "true", "yes")


def _int_param(request: web.Request, name: str, default: int | None, low: int,
               high: int | None) -> Any:  # fmt: skip
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = low - 1
    if value < low or (high is not None and value > high):
        allowed = f"{low}-{high}" if high is not None else f"{low} or more"
        raise _Refusal(400, {"error": f"{name}={quote(raw)} is not allowed: a number {allowed}"})
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
    app.router.add_get("/v1/openapi.json", openapi)
