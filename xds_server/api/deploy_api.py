"""The deploy desires' routes: the artifact index, capacity plans and rollouts.

Thin handlers over ``xds_server.deploy``: the artifact index (``artifacts``), the plan
service (``plan_worker``: plans are computed in a worker process, a request is answered
at once with the cached plan or ``202`` while it is computed) and the rollout engine
(``rollout.engine``: a start is checked and planned into waves here, the engine's loop
carries it out). Every mutation is audited with its caller.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from xds_server.api.admin_http import read_json
from xds_server.api.auth import PRINCIPAL
from xds_server.changes import Changes
from xds_server.config import ConfigError, quote
from xds_server.config.load import parse_text, validate_model
from xds_server.config.model import DeployFile
from xds_server.deploy import planning
from xds_server.deploy.artifacts import (
    CONFIG_VERSION_VAR,
    ArtifactError,
    Build,
    check_key,
    check_ref,
    config_version,
    pins_json,
)
from xds_server.deploy.index import ArtifactIndex
from xds_server.deploy.plan_worker import PlansBusy, PlanService
from xds_server.deploy.rollout.engine import RolloutEngine, RolloutRefused, StartRequest
from xds_server.deploy.rollout.model import FINAL, Options, Rollout
from xds_server.deploy.rollout.observe import observe
from xds_server.store import StoreError

log = logging.getLogger("xds_server.api.deploy")

CHANGES = web.AppKey("deploy_changes", Changes)
PLANS = web.AppKey("deploy_plans", PlanService)
ROLLOUTS = web.AppKey("deploy_rollouts", RolloutEngine)
MESSAGE_CHARS = 1000
_BOUNDS = {"bake_s": (0.0, 86400.0), "sync_timeout_s": (1.0, 86400.0), "baseline_s": (2.0, 3600.0),
           "max_error_rate_increase": (0.0, 1.0), "min_requests": (0, 10**9), "wave_size": (0, 10**6)}  # fmt: skip


class _BadRequest(Exception):
    pass


def _actor(request: web.Request) -> str:
    principal = request.get(PRINCIPAL)
    return principal.actor if principal is not None else "anonymous"


def _error(status: int, message: str, **extra: Any) -> web.Response:
    return web.json_response({"error": message, **extra}, status=status)


async def _body(request: web.Request) -> dict[str, Any]:
    try:
        body = await read_json(request, request.app[CHANGES].limits)
    except TimeoutError:
        raise _BadRequest("the request body did not arrive in time") from None
    except ValueError as e:
        raise _BadRequest(f"the body is not JSON: {quote(str(e), 200)}") from None
    if not isinstance(body, dict):
        raise _BadRequest("the body must be a JSON object")
    return body


async def _audit(request: web.Request, action: str, shard: str | None, accepted: bool, reason: str = "") -> None:
    try:
        await request.app[CHANGES].store.append_audit(actor=_actor(request), action=action, shard=shard,
                                                      base_version=None, new_version=None, accepted=accepted,
                                                      reason=reason[:500])  # fmt: skip
    except StoreError as e:
        log.error("event=audit_failed action=%s error=%s", action, e)


# --- shards: what their desires say ---------------------------------------------------


def shard_desires(changes: Changes, shard: str) -> dict[str, Any]:
    """A shard's deploy desires as ``dgw get shard`` shows them: tier, owners, locations
    and the pins its version runs."""
    state = changes.registry.shards.get(shard)
    desires = state.config.deploy_desires if state is not None else None
    if state is None or desires is None:
        return {"deploy": None}
    return {"deploy": {
        "tier": desires.service_tier,
        "owners": [f"{o.type} {o.value}" for o in desires.owners],
        "locations": ["/".join([loc.account, r, *([loc.stack] if loc.stack else [])])
                      for loc in desires.locations for r in loc.regions],
        "pins": pins_json(state.pins),
    }}  # fmt: skip


def owners_of(changes: Changes, shard: str) -> list[str]:
    state = changes.registry.shards.get(shard)
    desires = state.config.deploy_desires if state is not None else None
    return [f"{o.type} {o.value}" for o in desires.owners] if desires is not None else []


# --- artifacts ------------------------------------------------------------------------


def _key(request: web.Request) -> str:
    key = f"{request.match_info['kind']}/{request.match_info['name']}"
    check_key(key)
    return key


async def list_artifacts(request: web.Request) -> web.Response:
    index = ArtifactIndex(request.app[CHANGES].store)
    artifacts = sorted((await index.snapshot()).values(), key=lambda a: a.key)
    return web.json_response({"artifacts": [
        {"artifact": a.key, "refs": dict(sorted(a.refs.items())), "builds": len(a.builds),
         "latest": a.builds[-1].to_json() if a.builds else None} for a in artifacts
    ]})  # fmt: skip


async def get_artifact(request: web.Request) -> web.Response:
    try:
        key = _key(request)
    except ArtifactError as e:
        return _error(400, str(e))
    artifact = await ArtifactIndex(request.app[CHANGES].store).get(key)
    if artifact is None:
        return _error(404, f"no artifact {key}; dgw artifact push {key} ... makes it")
    return web.json_response(artifact.to_json())


async def push_artifact(request: web.Request) -> web.Response:
    """A build of an artifact: ``{"digest", "kind": "image"|"files", "source", "refs"}``."""
    key = f"{request.match_info['kind']}/{request.match_info['name']}"
    try:
        check_key(key)
        if not key.startswith("dals/"):
            raise ArtifactError(f"{key} is the runtime config itself: its versions are the shard's own "
                                "(nothing to push); push DAL builds as dals/NAME")  # fmt: skip
        body = await _body(request)
        refs = body.get("refs") or ["branch/main"]
        if not isinstance(refs, list) or not all(isinstance(r, str) for r in refs) or len(refs) > 16:
            raise _BadRequest("refs must be a list of at most 16 refs like branch/main, tag/v1")
        for ref in refs:
            check_ref(ref)
        kind, source, digest = body.get("kind"), body.get("source"), body.get("digest")
        if kind not in ("image", "files"):
            raise _BadRequest("kind must be image (a Docker image's ID) or files (a process DAL's files)")
        if not isinstance(source, str) or not 0 < len(source) <= 1000:
            raise _BadRequest("source must say where the build is found: the image reference, or the files")
        if not isinstance(digest, str):
            raise _BadRequest("digest must be sha256:<64 hex digits>")
        build = Build(digest, kind, source, dt.datetime.now(dt.UTC).isoformat(), _actor(request), tuple(refs))
        artifact = await ArtifactIndex(request.app[CHANGES].store).push(key, build)
    except (ArtifactError, _BadRequest) as e:
        await _audit(request, f"artifact.push {key[:80]}", None, False, f"400 {e}")
        return _error(400, str(e))
    await _audit(request, f"artifact.push {key}", None, True, f"{digest} as {', '.join(refs)} from {source}")
    log.info("event=artifact_pushed artifact=%s digest=%s refs=%s by=%s", key, digest, ",".join(refs),
             _actor(request))  # fmt: skip
    return web.json_response(artifact.to_json())


# --- plans ----------------------------------------------------------------------------


def _simulations(request: web.Request) -> int:
    raw = request.query.get("simulations", "0")
    if not raw.isdigit() or int(raw) > planning.MAX_SIMULATIONS:
        raise _BadRequest(f"simulations must be a whole number from 0 to {planning.MAX_SIMULATIONS}")
    return int(raw)


async def _plan(request: web.Request, desires: Any, shard: str | None) -> web.Response:
    plans = request.app[PLANS]
    try:
        ask = plans.request(desires, _simulations(request))
        answer = await plans.ask(ask)
    except planning.PlanProblem as e:
        return web.json_response({"error": str(e), "problems": [e.to_json()]}, status=400)
    except PlansBusy as e:
        return _error(503, str(e))
    body: dict[str, Any] = {"shard": shard, "key": answer.key, "state": answer.state}
    match answer.state:
        case "ready":
            return web.json_response({**body, "plan": answer.plan})
        case "computing":
            return web.json_response(body, status=202, headers={"Retry-After": "1"})
        case "problem":
            problem = dict(answer.problem or {})
            status = 501 if problem.get("message") == planning.INSTALL_HINT else 400
            return web.json_response({**body, "error": f"{problem.get('path')}: {problem.get('message')}",
                                      "problems": [problem]}, status=status)  # fmt: skip


async def shard_plan(request: web.Request) -> web.Response:
    changes = request.app[CHANGES]
    shard = request.match_info["shard"]
    state = changes.registry.shards.get(shard)
    if state is None:
        return _error(404, f"no shard {shard[:80]!r}")
    try:
        return await _plan(request, state.config.deploy_desires, shard)
    except _BadRequest as e:
        return _error(400, str(e))


async def post_plan(request: web.Request) -> web.Response:
    """The plan of a posted shard or deploy-desires file (``{"yaml", "file"}``)."""
    changes = request.app[CHANGES]
    try:
        body = await _body(request)
        text, file = body.get("yaml"), body.get("file") or "request"
        if not isinstance(text, str) or not text.strip() or not isinstance(file, str):
            raise _BadRequest('the body needs "yaml": a shard file or a deploy desires file')
        desires = _desires_of(changes, text, file[:200])
        return await _plan(request, desires, None)
    except _BadRequest as e:
        return _error(400, str(e))
    except ConfigError as e:
        return web.json_response({"error": "the file is invalid; nothing was planned",
                                  "problems": [{"path": p.path, "message": p.message} for p in e.problems]},
                                 status=400)  # fmt: skip


def _desires_of(changes: Changes, text: str, file: str) -> Any:
    """A shard file's, or a deploy desires file's, desires (validated as the server would)."""
    env = {CONFIG_VERSION_VAR: config_version(text)}
    data = parse_text(text, file, env, changes.policy, changes.limits)
    if set(data) == {"deploy_desires"}:
        return validate_model(DeployFile, data, file).deploy_desires
    loaded = changes.check_text(text, file)
    if isinstance(loaded, ConfigError):
        raise loaded
    return loaded.config.deploy_desires


# --- rollouts --------------------------------------------------------------------------


def _options(body: Mapping[str, Any]) -> Options:
    values: dict[str, Any] = {}
    for name, (low, high) in _BOUNDS.items():
        if name not in body:
            continue
        value = body[name]
        if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
            raise _BadRequest(f"{name} must be a number from {low:g} to {high:g}")
        values[name] = int(value) if name in ("min_requests", "wave_size") else float(value)
    return Options(**values)


def _start_request(body: Mapping[str, Any], actor: str) -> StartRequest:
    unknown = sorted(set(body) - {"files", "shards", "artifacts", "message", *_BOUNDS})
    if unknown:
        raise _BadRequest(f"unknown field {unknown[0]!r}; allowed: files, shards, artifacts, message, "
                          + ", ".join(_BOUNDS))  # fmt: skip
    message = body.get("message", "")
    if not isinstance(message, str) or len(message) > MESSAGE_CHARS:
        raise _BadRequest(f"message must be text of at most {MESSAGE_CHARS} characters")
    files, shards, artifacts = body.get("files"), body.get("shards"), body.get("artifacts")
    if files is not None:
        if not isinstance(files, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in files.items()):
            raise _BadRequest('files must map shard names to their new files: {"kv": "proxy_config: ..."}')
        if shards is not None or artifacts is not None:
            raise _BadRequest("files rolls new shard files out; shards and artifacts re-resolve version "
                              "sets: give one or the other")  # fmt: skip
    for name, value in (("shards", shards), ("artifacts", artifacts)):
        if value is not None and (not isinstance(value, list) or not all(isinstance(v, str) for v in value)):
            raise _BadRequest(f"{name} must be a list of names")
    for key in artifacts or []:
        check_key(key)
    return StartRequest(actor, message, _options(body), files, shards, artifacts)


def rollout_view(r: Rollout, changes: Changes, live: bool) -> dict[str, Any]:
    """A rollout as the API shows it; ``live``: with its current wave's nodes, by location."""
    data = r.to_json()
    data.pop("pinsets")
    wave = r.current
    if live and wave is not None and r.state not in FINAL:
        views = observe(changes.registry, wave.shards, 10.0, time.time())
        groups: dict[str, dict[str, Any]] = {}
        for shard in wave.shards:
            target = r.targets[shard]
            for n in views[shard].nodes:
                g = groups.setdefault(n.location or "(no location)", {"nodes": 0, "taken": 0, "behind": []})
                g["nodes"] += 1
                taken = n.config_version in (None, target.config_version) and n.xds in (None, "SYNCED") and all(
                    h == "HEALTHY" for h, _ in n.dals.values())
                if taken and target.config_version is not None:
                    g["taken"] += 1
                elif len(g["behind"]) < 5:
                    g["behind"].append(f"{shard}/{n.node}: " + (n.xds or "") + "".join(
                        f" {d}={h}" for d, (h, _) in sorted(n.dals.items()) if h != "HEALTHY"))
        data["live"] = {"wave": wave.index, "locations": dict(sorted(groups.items()))}
    return data


async def start_rollout(request: web.Request) -> web.Response:
    engine = request.app[ROLLOUTS]
    try:
        body = await _body(request)
        rollout = await engine.create(_start_request(body, _actor(request)))
    except (_BadRequest, ArtifactError) as e:
        await _audit(request, "rollout.start", None, False, f"400 {e}")
        return _error(400, str(e))
    except RolloutRefused as e:
        await _audit(request, "rollout.start", None, False, f"{e.status} {e}: " + json.dumps(e.details)[:300])
        return _error(e.status, str(e), shards=e.details)
    return web.json_response(rollout_view(rollout, request.app[CHANGES], False), status=201)


async def list_rollouts(request: web.Request) -> web.Response:
    rollouts = await request.app[ROLLOUTS].rollouts()
    return web.json_response({"rollouts": [
        {"id": r.id, "state": r.state, "paused": r.paused, "kind": r.kind, "created_by": r.created_by,
         "created_at": r.created_at, "finished_at": r.finished_at, "shards": len(r.targets),
         "waves": len(r.waves), "passed": sum(1 for w in r.waves if w.state == "passed"),
         "current": r.current.name if r.current and r.state not in FINAL else None, "outcome": r.outcome,
         "message": r.message} for r in reversed(rollouts)
    ]})  # fmt: skip


async def get_rollout(request: web.Request) -> web.Response:
    r = await request.app[ROLLOUTS].get(request.match_info["rollout"])
    if r is None:
        return _error(404, f"no rollout {request.match_info['rollout'][:40]!r}; dgw rollout list shows them")
    return web.json_response(rollout_view(r, request.app[CHANGES], True))


async def change_rollout(request: web.Request) -> web.Response:
    what, rollout_id = request.match_info["action"], request.match_info["rollout"]
    if what not in ("pause", "resume", "abort"):
        return _error(404, f"a rollout can be paused, resumed or aborted, not {what[:40]!r}")
    try:
        r = await request.app[ROLLOUTS].change(rollout_id, what, _actor(request))
    except RolloutRefused as e:
        await _audit(request, f"rollout.{what}", None, False, f"{e.status} {e}")
        return _error(e.status, str(e))
    return web.json_response(rollout_view(r, request.app[CHANGES], False))


def register(app: web.Application, changes: Changes, plans: PlanService, rollouts: RolloutEngine) -> None:
    app[CHANGES], app[PLANS], app[ROLLOUTS] = changes, plans, rollouts
    app.router.add_get("/v1/artifacts", list_artifacts)
    app.router.add_get("/v1/artifacts/{kind}/{name}", get_artifact)
    app.router.add_post("/v1/artifacts/{kind}/{name}", push_artifact)
    app.router.add_get("/v1/shards/{shard}/plan", shard_plan)
    app.router.add_post("/v1/plans", post_plan)
    app.router.add_get("/v1/rollouts", list_rollouts)
    app.router.add_post("/v1/rollouts", start_rollout)
    app.router.add_get("/v1/rollouts/{rollout}", get_rollout)
    app.router.add_post("/v1/rollouts/{rollout}/{action}", change_rollout)
