"""The migrations' routes: a shard's migration, read and moved step by step.

Thin handlers over ``xds_server.migrate``: each parses its body, hands the engine a
pure step (``migrate.plan``), and answers the migration as it now is, or the step's
refusal as one line (``{"error"}``: 404 no such shard, DAL or migration; 409 out of
order or already running; 412 the runner's If-Match is stale; 400 bad input). The
engine audits each step with its caller.

- ``GET  /v1/migrations``, ``GET /v1/migrations/{shard}``: phase, from, to, version,
  backfill (the runner's checkpoint), progress (rate, ETA), verify (report),
  differences left, throttle, promotion, endpoints of both DALs, ``next``;
- ``POST .../start {from, to}``, ``.../throttle {items_per_s, bytes_per_s}``,
  ``.../promote {steps, interval_s, ...}``, ``.../rollback {abandon}``, ``.../finish``;
- ``PUT .../backfill`` and ``.../verify`` (If-Match: the migration's version): the
  runner's checkpoint and report.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from xds_server.api.admin_http import read_json
from xds_server.api.auth import PRINCIPAL
from xds_server.config import quote
from xds_server.migrate import plan
from xds_server.migrate.engine import MigrationEngine
from xds_server.migrate.model import Judgement, Migration
from xds_server.migrate.plan import Refused
from xds_server.settings import Limits

ENGINE = web.AppKey("migrations", MigrationEngine)
LIMITS = web.AppKey("migrations_limits", Limits)
_IF_MATCH = re.compile(r'(?:W/)?"?(\d{1,18})"?')
_JUDGEMENT = {"max_error_rate_increase": (0.0, 1.0), "max_p99_ratio": (1.0, 100.0), "p99_slack_ms": (0.0, 60000.0),
              "min_requests": (0, 10**9), "min_p99_requests": (1, 10**9)}  # fmt: skip


def _actor(request: web.Request) -> str:
    principal = request.get(PRINCIPAL)
    return principal.actor if principal is not None else "anonymous"


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


async def _body(request: web.Request, allowed: set[str]) -> dict[str, Any]:
    if not request.can_read_body:
        return {}
    try:
        body = await read_json(request, request.app[LIMITS])
    except TimeoutError:
        raise Refused(400, "the request body did not arrive in time") from None
    except ValueError as e:
        raise Refused(400, f"the body is not JSON: {quote(str(e), 200)}") from None
    if body is None:
        return {}
    if not isinstance(body, dict):
        raise Refused(400, "the body must be a JSON object")
    unknown = sorted(set(body) - allowed)
    if unknown and allowed:
        raise Refused(
            400, f"unknown field {quote(unknown[0], 60)}; allowed: {', '.join(sorted(allowed))}"
        )
    return body


def _name(body: Mapping[str, Any], key: str) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not value or len(value) > 200 or not value.isprintable():
        raise Refused(400, f'"{key}" must name a DAL of the shard')
    return value


def _rate(body: Mapping[str, Any], key: str) -> float | None:
    value = body.get(key)
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise Refused(400, f"{key} must be a finite number above 0")
    return float(value)


def _if_match(request: web.Request) -> int:
    raw = request.headers.get("If-Match", "")
    match = _IF_MATCH.fullmatch(raw.strip())
    if match is None:
        raise Refused(
            428, "If-Match must name the migration's version (GET /v1/migrations/{shard} says it)"
        )
    return int(match.group(1))


async def _answer(request: web.Request, action: str, step: Any, if_match: int | None = None,
                  status: int = 200) -> web.Response:  # fmt: skip
    engine = request.app[ENGINE]
    shard = request.match_info["shard"]
    try:
        m = await engine.act(shard, action, _actor(request), step, if_match=if_match)
    except Refused as e:
        return _error(e.status, str(e))
    return web.json_response(engine.view(m), status=status)


# --- reads ----------------------------------------------------------------------------


async def list_migrations(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    return web.json_response({"migrations": [
        {"shard": m.shard, "from": m.source, "to": m.target, "phase": m.phase, "version": m.record_version,
         "updated_at": m.updated_at, "next": plan.next_step(m)} for m in await engine.migrations()
    ]})  # fmt: skip


async def get_migration(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    shard = request.match_info["shard"]
    m = await engine.get(shard)
    if m is None:
        return _error(
            404,
            f"shard {shard} has no migration; start one: dgw migrate {shard} start --from A --to B",
        )
    return web.json_response(engine.view(m))


# --- steps ------------------------------------------------------------------------------


async def start(request: web.Request) -> web.Response:
    try:
        body = await _body(request, {"from", "to"})
        source, target = _name(body, "from"), _name(body, "to")
    except Refused as e:
        return _error(e.status, str(e))
    actor, now = _actor(request), request.app[ENGINE].clock()
    shard = request.match_info["shard"]

    def step(m: Migration | None, config: Any, version: int) -> Migration:
        return plan.start(m, config, shard, source, target, by=actor, now=now, version=version)

    return await _answer(request, "start", step, status=201)


async def _runner_put(request: web.Request, section: str) -> web.Response:
    """The runner's checkpoint (``backfill``) or report (``verify``), If-Match."""
    try:
        version = _if_match(request)
        body = await _body(request, set())
    except Refused as e:
        return _error(e.status, str(e))
    actor, now, shard = _actor(request), request.app[ENGINE].clock(), request.match_info["shard"]
    record = plan.backfill if section == "backfill" else plan.verify
    return await _answer(request, section, lambda m, _c, _v: record(m, shard, body, by=actor, now=now),
                         if_match=version)  # fmt: skip


async def put_backfill(request: web.Request) -> web.Response:
    return await _runner_put(request, "backfill")


async def put_verify(request: web.Request) -> web.Response:
    return await _runner_put(request, "verify")


async def throttle(request: web.Request) -> web.Response:
    try:
        body = await _body(request, {"items_per_s", "bytes_per_s"})
        items, size = _rate(body, "items_per_s"), _rate(body, "bytes_per_s")
        if items is None and size is None:
            raise Refused(400, "give items_per_s, bytes_per_s or both")
    except Refused as e:
        return _error(e.status, str(e))
    actor, now, shard = _actor(request), request.app[ENGINE].clock(), request.match_info["shard"]
    return await _answer(request, "throttle",
                         lambda m, _c, _v: plan.throttle(m, shard, items, size, by=actor, now=now))  # fmt: skip


async def promote(request: web.Request) -> web.Response:
    try:
        body = await _body(request, {"steps", "interval_s", *_JUDGEMENT})
        steps, interval = body.get("steps"), body.get("interval_s")
        if steps is not None and (not isinstance(steps, list) or not steps):
            raise Refused(400, "steps must be a list of percents of reads, e.g. [1, 10, 50, 100]")
        if steps is not None:
            plan.check_steps(steps, interval)
        elif interval is not None:
            raise Refused(400, "interval_s goes with steps (a progressive promotion)")
        judgement = _judgement(body)
    except Refused as e:
        return _error(e.status, str(e))
    actor, now, shard = _actor(request), request.app[ENGINE].clock(), request.match_info["shard"]
    return await _answer(request, "promote", lambda m, _c, _v: plan.promote(
        m, shard, steps, interval, by=actor, now=now, judgement=judgement))  # fmt: skip


def _judgement(body: Mapping[str, Any]) -> Judgement:
    values: dict[str, Any] = {}
    for name, (low, high) in _JUDGEMENT.items():
        if name not in body:
            continue
        value = body[name]
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not low <= value <= high
        ):
            raise Refused(400, f"{name} must be a number from {low:g} to {high:g}")
        if name.startswith("min_") and value != int(value):
            raise Refused(400, f"{name} must be a whole number from {low:g} to {high:g}")
        values[name] = int(value) if name.startswith("min_") else float(value)
    return Judgement(**values)


async def rollback(request: web.Request) -> web.Response:
    try:
        body = await _body(request, {"abandon"})
        abandon = body.get("abandon", False)
        if not isinstance(abandon, bool):
            raise Refused(400, "abandon must be true or false")
    except Refused as e:
        return _error(e.status, str(e))
    actor, now, shard = _actor(request), request.app[ENGINE].clock(), request.match_info["shard"]
    return await _answer(request, "rollback",
                         lambda m, _c, _v: plan.rollback(m, shard, by=actor, now=now, abandon=abandon))  # fmt: skip


async def finish(request: web.Request) -> web.Response:
    try:
        await _body(request, set())
    except Refused as e:
        return _error(e.status, str(e))
    actor, now, shard = _actor(request), request.app[ENGINE].clock(), request.match_info["shard"]
    return await _answer(
        request, "finish", lambda m, _c, _v: plan.finish(m, shard, by=actor, now=now)
    )


def register(app: web.Application, engine: MigrationEngine, limits: Limits) -> None:
    app[ENGINE], app[LIMITS] = engine, limits
    app.router.add_get("/v1/migrations", list_migrations)
    app.router.add_get("/v1/migrations/{shard}", get_migration)
    app.router.add_post("/v1/migrations/{shard}/start", start)
    app.router.add_put("/v1/migrations/{shard}/backfill", put_backfill)
    app.router.add_put("/v1/migrations/{shard}/verify", put_verify)
    app.router.add_post("/v1/migrations/{shard}/throttle", throttle)
    app.router.add_post("/v1/migrations/{shard}/promote", promote)
    app.router.add_post("/v1/migrations/{shard}/rollback", rollback)
    app.router.add_post("/v1/migrations/{shard}/finish", finish)
