"""Every route of the admin app has an entry in the role table (none relies on the
default), and the OpenAPI document states that role (``x-dgw-role``) for each."""

from __future__ import annotations

from pathlib import Path

import yaml

from xds_server.api import (
    admin,
    auth,
    deploy_api,
    fleet,
    migrations_api,
    replicas_api,
    revocations_api,
)
from xds_server.api.guard import PARAMETERS
from xds_server.cache import SnapshotCache
from xds_server.changes import Changes
from xds_server.deploy.plan_worker import PlanService
from xds_server.deploy.rollout.engine import RolloutEngine
from xds_server.migrate.engine import MigrationEngine
from xds_server.security.revocations import Revocations
from xds_server.security.tokens import MemoryTokenStore
from xds_server.settings import Limits
from xds_server.shards import ShardRegistry

ROOT = Path(__file__).resolve().parents[2]
DOCUMENT = ROOT / "docs" / "openapi.yaml"


class NoStore:
    """Routes are registered without touching a store."""


class NoAudit:
    async def append_audit(self, **_: object) -> None:
        raise AssertionError("not called here")

    async def audit_log(self, **_: object) -> tuple[()]:
        return ()


def routes() -> set[tuple[str, str]]:
    registry = ShardRegistry(SnapshotCache())
    changes = Changes(NoStore(), registry)  # type: ignore[arg-type]
    app = admin.make_app(registry, changes=changes)
    fleet.add_routes(app, registry)
    revocations_api.register(app, Revocations(NoStore(), print), NoAudit(), Limits())  # type: ignore[arg-type]
    replicas_api.register(app, None)
    deploy_api.register(app, changes, PlanService(NoStore()), RolloutEngine(NoStore(), changes))  # type: ignore[arg-type]
    migrations_api.register(app, MigrationEngine(NoStore(), changes), Limits())  # type: ignore[arg-type]
    auth.install(app, auth.Access(MemoryTokenStore(), NoAudit()))  # type: ignore[arg-type]
    return {
        (r.method, r.resource.canonical)
        for r in app.router.routes()
        if r.resource is not None and r.method != "HEAD"
    }


def test_every_route_has_a_role_and_every_role_a_documented_route():
    served = routes()
    assert served - set(auth.ROUTE_ROLES) == set()
    document = yaml.safe_load(DOCUMENT.read_text())
    documented = {
        (method.upper(), path): op["x-dgw-role"]
        for path, item in document["paths"].items()
        for method, op in item.items()
        if method in ("get", "put", "post", "delete", "patch")
    }
    assert served == set(documented)
    for key, role in documented.items():
        assert auth.ROUTE_ROLES[key] == role, key
        assert (document["paths"][key[1]][key[0].lower()].get("security") == []) == (role == "open")


def test_every_path_parameter_has_a_grammar():
    """The guard (api/guard.py) refuses a parameter it has no grammar for: every route's
    parameters are in its table, so none is refused by mistake, none open by mistake."""
    names = {part[1:-1].split(":")[0] for _, path in routes() for part in path.split("/") if part.startswith("{")}
    assert names and names <= set(PARAMETERS), names - set(PARAMETERS)
