"""docs/openapi.yaml: a valid OpenAPI 3.1 document naming every route of the admin
app, and served at /v1/openapi.json."""

from __future__ import annotations

import yaml
from openapi_spec_validator import validate

from xds_server.api import admin, migrations_api, revocations_api
from xds_server.api.shards_api import OPENAPI_PATH
from xds_server.cache import SnapshotCache
from xds_server.changes import Changes
from xds_server.migrate.engine import MigrationEngine
from xds_server.security.revocations import Revocations
from xds_server.settings import Limits
from xds_server.shards import ShardRegistry

from .conftest import Api

MUTATING = {"POST", "PUT", "DELETE", "PATCH"}


def document() -> dict:
    return yaml.safe_load(OPENAPI_PATH.read_text())


def app_routes() -> set[tuple[str, str]]:
    registry = ShardRegistry(SnapshotCache())
    app = admin.make_app(registry, changes=Changes(None, registry))  # type: ignore[arg-type]
    revocations_api.register(app, Revocations(None, print), None, Limits())  # type: ignore[arg-type]
    migrations_api.register(app, MigrationEngine(None, None), Limits())  # type: ignore[arg-type]
    routes = set()
    for route in app.router.routes():
        if route.method == "HEAD":
            continue
        path = route.resource.canonical if route.resource else ""
        routes.add((route.method, path))
    return routes


def test_the_document_is_valid_openapi_3_1() -> None:
    spec = document()
    assert spec["openapi"].startswith("3.1")
    validate(spec)


def test_every_route_of_the_app_is_in_the_document() -> None:
    paths = document()["paths"]
    missing = [f"{m} {p}" for m, p in sorted(app_routes()) if m.lower() not in paths.get(p, {})]
    assert not missing, f"routes missing from {OPENAPI_PATH}: {missing}"


def test_mutations_document_if_match_dry_run_and_their_refusals() -> None:
    spec = document()
    for method, path in app_routes():
        if method not in MUTATING or not path.startswith("/v1/shards/"):
            continue
        operation = spec["paths"][path][method.lower()]
        names = {p["$ref"].rsplit("/", 1)[-1] for p in operation["parameters"] if "$ref" in p}
        assert {"ifMatch", "dryRun"} <= names, (method, path)
        assert {"401", "403", "409", "428"} <= set(operation["responses"]), (method, path)



async def test_the_server_serves_it_as_json(api: Api) -> None:
    status, body, _ = await api.call("GET", "/v1/openapi.json")
    assert status == 200 and body == document()
