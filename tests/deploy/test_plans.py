"""Capacity plans through the server and ``dgw plan``: the seed's desires give a plan
with instances in each named region, the plan grows with the rates and the state,
bad desires get one line at their key path, plans are cached, and without the
planner the command says how to install it. Version sets are checked on the way in:
an artifact that does not exist is refused at apply time with its key path."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from tests.api.conftest import Api
from tests.cli.run import EXAMPLES, dgw
from xds_server.config import load_any
from xds_server.deploy import planning

SEED = EXAMPLES / "deploy" / "kv-deploy-desires.yaml"
RUNTIME = """\
proxy_config:
  public_listeners:
    api: {mode: http, path: 18090}
container_dals:
  kv: {image: dgw-kv, container_listeners: {api: 18091}}
"""

pytestmark = pytest.mark.slow  # the planner: seconds of CPU in a worker process


def cli_env(api: Api) -> dict[str, str]:
    return {"DGW_SERVER": api.base, "DGW_TOKEN": api.server.admin_token_path.read_text().strip()}


async def run(api: Api, *args: str):
    return await asyncio.to_thread(dgw, *args, env=cli_env(api), timeout=120)


def seed_desires(**scale: float):
    desires = load_any(SEED, env={"DGW_CONFIG_VERSION": "x"}).deploy_desires
    c = desires.capacity
    qp = c.query_pattern.model_copy(update={
        k: getattr(c.query_pattern, k).model_copy(update={f: v * scale.get("rps", 1) for f, v in
                                                         getattr(c.query_pattern, k).model_dump().items()})
        for k in ("estimated_read_per_second", "estimated_write_per_second")})
    state = c.data_shape.estimated_state_size_gib
    ds = c.data_shape.model_copy(update={"estimated_state_size_gib": state.model_copy(update={
        f: v * scale.get("state", 1) for f, v in state.model_dump().items()})})
    return desires.model_copy(update={"capacity": c.model_copy(update={"query_pattern": qp, "data_shape": ds})})


def test_the_plan_grows_with_the_rates_and_with_the_state():
    def plan(**scale: float) -> dict:
        result = planning.compute(planning.plan_request(seed_desires(**scale)))
        assert "problem" not in result, result
        return result

    base, busy, big = plan(), plan(rps=10), plan(state=10)
    assert busy["total_annual_cost"] > base["total_annual_cost"]
    assert big["total_annual_cost"] > base["total_annual_cost"]

    def cores(p: dict, kind: str) -> float:
        return next(r["cpu_cores"] for r in p["requirements"] if r["type"] == kind)

    def disk(p: dict) -> float:
        return sum(r["disk_gib"] for r in p["requirements"])

    assert cores(busy, "nflx-java-app") > cores(base, "nflx-java-app")
    assert disk(big) > disk(base)


async def test_plans_through_the_server_and_dgw_plan(api: Api, tmp_path: Path):
    """One server (its planner worker loads once) for every way in: a file, a stored
    shard, a comparison, bad desires, and no planner at all."""
    await the_seeds_desires_plan_instances_in_each_named_region(api)
    for edit, path in BAD:
        await bad_desires_get_one_line_at_their_key_path(api, tmp_path, edit, path)
    await an_unknown_artifact_is_refused_at_apply_and_a_stored_shards_plan_compares(api, tmp_path)
    await without_the_planner_the_command_says_how_to_install_it(api)


async def the_seeds_desires_plan_instances_in_each_named_region(api: Api) -> None:
    done = await run(api, "plan", str(SEED), "-o", "json")
    assert done.returncode == 0, done.stderr
    plan = json.loads(done.stdout)["plan"]
    assert [loc["location"] for loc in plan["locations"]] == [
        "prod/us-east-2", "prod/us-east-1", "prod/eu-west-1", "prod/us-west-2", "prod/us-east-1/leader"]
    for loc in plan["locations"]:
        assert loc["clusters"] and all(c["count"] >= 1 and c["instance"] for c in loc["clusters"])
        assert loc["annual_cost"] > 0 and loc["priced_as"] == "us-east-1"
    assert {c["cluster"] for c in plan["locations"][0]["clusters"]} >= {"dgwkv"}
    table = await run(api, "plan", str(SEED))
    assert table.returncode == 0 and "us-west-2" in table.stdout and "total annual cost: $" in table.stdout
    assert "requirement met:" in table.stdout


async def an_unknown_artifact_is_refused_at_apply_and_a_stored_shards_plan_compares(api: Api, tmp_path: Path) -> None:
    shard = tmp_path / "kv.yaml"
    shard.write_text(RUNTIME + SEED.read_text())
    refused = await run(api, "apply", "-f", str(shard), "--shard", "kv")
    assert refused.returncode == 1
    assert "deploy_desires.version_set.artifacts.dals/dgw-kv: no artifact dals/dgw-kv in the artifact index" in refused.stderr
    build = tmp_path / "dgw-kv.bin"
    build.write_text("a build")
    pushed = await run(api, "artifact", "push", "dals/dgw-kv", "--files", str(build))
    assert pushed.returncode == 0, pushed.stderr
    applied = await run(api, "apply", "-f", str(shard), "--shard", "kv")
    assert applied.returncode == 0, applied.stderr
    shown = await run(api, "get", "shard", "kv")
    assert "owners:  google-group our-cool-team@netflix.com, pager our-cool-pagerduty-service" in shown.stdout
    assert "pin:     dals/dgw-kv = sha256:" in shown.stdout and "tier:    0" in shown.stdout
    edited = tmp_path / "kv-edited.yaml"
    edited.write_text(shard.read_text().replace("estimated_state_size_gib: {low: 20, mid: 200, high: 2000}",
                                                "estimated_state_size_gib: {low: 200, mid: 2000, high: 20000}"))
    compared = await run(api, "plan", str(edited), "--compare", "kv")
    assert compared.returncode == 0, compared.stderr
    assert "beside stored shard kv" in compared.stdout and "total annual cost: $" in compared.stdout
    # The stored shard's plan is cached: asked again, it is there at once.
    status, body, _ = await api.call("GET", "/v1/shards/kv/plan")
    assert status == 200 and body["state"] == "ready"


BAD = [
    (("org.netflix.key-value", "org.netflix.key-valu"), "deploy_desires.capacity.model_name"),
    (("{low: 2000, mid: 20000, high: 200000}", "{low: 2000, mid: 20000, high: 200}"),
     "deploy_desires.capacity.query_pattern.estimated_read_per_second"),
    (("{low: 20, mid: 200, high: 2000}", "{low: -20, mid: 200, high: 2000}"),
     "deploy_desires.capacity.data_shape.estimated_state_size_gib.low"),
]


async def bad_desires_get_one_line_at_their_key_path(api: Api, tmp_path: Path, edit: tuple[str, str],
                                                     path: str) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(SEED.read_text().replace(*edit, 1))
    done = await run(api, "plan", str(bad))
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"dgw plan: {path}: "), lines
    if "model_name" in path:
        assert "did you mean 'org.netflix.key-value'?" in lines[0]


async def without_the_planner_the_command_says_how_to_install_it(api: Api) -> None:
    assert api.server.plans is not None
    api.server.plans._version = None  # as on a server without the extra (and a plan not cached)
    done = await run(api, "plan", str(SEED), "--simulations", "3")
    assert done.returncode == 1
    assert "pip install 'data-gateway[plan]'" in done.stderr
