"""Capacity plans from deploy desires, with Netflix's own planner
(``service-capacity-modeling``, an optional extra: ``pip install 'data-gateway[plan]'``).

``plan_request`` (pure) turns a shard's ``deploy_desires`` — ``capacity`` (model, access
pattern, ``{low, mid, high}`` rates and state size, reserved memory), ``service_tier``
and ``locations`` — into what the planner is asked, with the key it is cached by (a
hash of exactly that, and of the planner's version). ``compute`` asks the planner and
turns its plan into ours: per location (account/region/stack) the clusters — the DAL
fleet (regional) and its datastore (per zone) — instance type, family and count, each
one's annual cost, and the requirement the plan met. It runs in a worker process
(``plan_worker``): the planner needs seconds of CPU and numpy, never the event loop.

Two methods, both the planner's:

- default: ``plan_certain`` at the desires' ``mid`` values — the least-cost plan that
  meets them, deterministic, about a second;
- ``simulations=N``: ``plan`` over the intervals (each simulated between ``low`` and
  ``high``), its least-regret plan across N sampled worlds — the planner's answer to
  uncertainty, about a second per simulation here.

The planner ships one hardware and price catalog (AWS us-east-1). A location in
another region is planned with that catalog and says so (``priced_as``); every
location of a shard gets the same desires (the seed's are per region).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from xds_server.config.model import DeployDesires, Interval

INSTALL_HINT = (
    "the capacity planner is not installed: pip install 'data-gateway[plan]' (Netflix's "
    "service-capacity-modeling, Python < 3.13; with numpy and scipy about 150 MB)"
)
PLANNER_TIER_MAX = 3  # the planner knows tiers 0-3; a less critical tier plans as 3
MAX_SIMULATIONS = 256
# How confident the intervals are when simulated: the planner simulates an interval
# only below 1.0 (0.98 is what its own examples use for {low, mid, high} guesses).
SIMULATED_CONFIDENCE = 0.98
CAPACITY = "deploy_desires.capacity"


class PlanProblem(ValueError):
    """Desires the planner cannot plan: one line at a key path."""

    def __init__(self, path: str, message: str):
        super().__init__(f"{path}: {message}")
        self.path, self.message = path, message

    def to_json(self) -> dict[str, str]:
        return {"path": self.path, "message": self.message}


@dataclass(frozen=True)
class PlanLocation:
    name: str  # account/region[/stack]
    region: str


def planner_version() -> str | None:
    """The installed planner's version; None when it is not installed."""
    from importlib import metadata

    try:
        return metadata.version("service-capacity-modeling")
    except metadata.PackageNotFoundError:
        return None


def _interval(i: Interval | None) -> list[float] | None:
    return None if i is None else [i.low, i.mid, i.high]


def plan_request(desires: DeployDesires | None, simulations: int = 0,
                 version: str | None = "") -> dict[str, Any]:  # fmt: skip
    """What the planner is asked for these desires, with ``key``: the hash it is cached
    by. ``PlanProblem`` when there is nothing to plan."""
    if desires is None or desires.capacity is None:
        raise PlanProblem(CAPACITY, "these deploy_desires have no capacity to plan (capacity: model_name, "
                                    "query_pattern, data_shape)")  # fmt: skip
    if not 0 <= simulations <= MAX_SIMULATIONS:
        raise PlanProblem("simulations", f"must be 0 (plan at the mid values) to {MAX_SIMULATIONS}")
    c = desires.capacity
    locations = [PlanLocation("/".join([loc.account, region, *([loc.stack] if loc.stack else [])]), region)
                 for loc in desires.locations for region in loc.regions]  # fmt: skip
    request = {
        "model": c.model_name,
        "tier": desires.service_tier,
        "access_pattern": c.query_pattern.access_pattern,
        "reads": _interval(c.query_pattern.estimated_read_per_second),
        "writes": _interval(c.query_pattern.estimated_write_per_second),
        "state_gib": _interval(c.data_shape.estimated_state_size_gib),
        "reserved_mem_gib": c.data_shape.reserved_instance_app_mem_gib,
        "locations": [[loc.name, loc.region] for loc in locations],
        "simulations": simulations,
        "planner": planner_version() if version == "" else version,
    }
    request["key"] = hashlib.sha256(json.dumps(request, sort_keys=True).encode()).hexdigest()[:24]
    return request


def _planner_interval(values: list[float] | None, simulated: bool) -> Any:
    from service_capacity_modeling.interface import Interval as PlannerInterval

    if values is None:
        return None
    low, mid, high = values
    return PlannerInterval(low=low, mid=mid, high=high, confidence=SIMULATED_CONFIDENCE if simulated else 1.0)


def _capacity_desires(request: Mapping[str, Any]) -> Any:
    from service_capacity_modeling.interface import CapacityDesires, DataShape, QueryPattern

    simulated = request["simulations"] > 0
    query: dict[str, Any] = {"access_pattern": request["access_pattern"]}
    for ours, theirs in (("reads", "estimated_read_per_second"), ("writes", "estimated_write_per_second")):
        if request[ours] is not None:
            query[theirs] = _planner_interval(request[ours], simulated)
    shape: dict[str, Any] = {}
    if request["state_gib"] is not None:
        shape["estimated_state_size_gib"] = _planner_interval(request["state_gib"], simulated)
    if request["reserved_mem_gib"] is not None:
        shape["reserved_instance_app_mem_gib"] = request["reserved_mem_gib"]
    return CapacityDesires(service_tier=min(request["tier"], PLANNER_TIER_MAX),
                           query_pattern=QueryPattern(**query), data_shape=DataShape(**shape))  # fmt: skip


def _check(request: Mapping[str, Any], models: list[str]) -> None:
    import difflib

    model = request["model"]
    if model not in models:
        close = difflib.get_close_matches(model, models, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise PlanProblem(f"{CAPACITY}.model_name", f"{model[:80]!r} is not a model of the capacity planner; "
                                                    f"{hint}(models: {', '.join(models)})")  # fmt: skip
    writes = request["writes"]
    if model == "org.netflix.key-value" and (writes is None or writes[1] <= 0):
        raise PlanProblem(f"{CAPACITY}.query_pattern.estimated_write_per_second",
                          "a key-value plan needs writes: give estimated_write_per_second with mid above 0")


def compute(request: Mapping[str, Any]) -> dict[str, Any]:
    """Ask the planner (in a worker process). Returns the plan document, or
    ``{"problem": {"path", "message"}}``."""
    started = time.perf_counter()
    try:
        from service_capacity_modeling.capacity_planner import planner
        from service_capacity_modeling.hardware import shapes
    except ImportError:
        return {"problem": PlanProblem(CAPACITY, INSTALL_HINT).to_json()}
    try:
        _check(request, sorted(planner.models))
        desires = _capacity_desires(request)
    except PlanProblem as e:
        return {"problem": e.to_json()}
    catalog = sorted(shapes.hardware.regions)
    locations = [tuple(x) for x in request["locations"]] or [("(no locations)", catalog[0])]
    regions = sorted({region for _, region in locations})
    by_catalog: dict[str, Any] = {}
    try:
        for _, region in locations:
            priced = region if region in catalog else catalog[0]
            if priced not in by_catalog:
                by_catalog[priced] = _one_plan(planner, request, priced, desires, len(regions))
    except Exception as e:  # the planner's own failures: said at the capacity key, in one line
        first = " ".join(str(e).split())[:300] or type(e).__name__
        return {"problem": PlanProblem(CAPACITY, f"the planner failed: {type(e).__name__}: {first}").to_json()}
    out_locations = []
    for name, region in locations:
        priced = region if region in catalog else catalog[0]
        plan = by_catalog[priced]
        out_locations.append({"location": name, "region": region, "priced_as": priced, **plan["clusters"]})
    first = by_catalog[next(iter(by_catalog))]
    return {
        "key": request["key"],
        "model": request["model"],
        "tier": request["tier"],
        "method": _method(request["simulations"]),
        "planner": request["planner"],
        "locations": out_locations,
        "total_annual_cost": round(sum(loc["annual_cost"] for loc in out_locations), 2),
        "requirements": first["requirements"],
        "catalog_regions": catalog,
        "compute_s": round(time.perf_counter() - started, 3),
    }


def _method(simulations: int) -> str:
    if simulations:
        return f"least regret over {simulations} simulated worlds between low and high"
    return "least cost at the mid values (plan_certain)"


def _one_plan(planner: Any, request: Mapping[str, Any], region: str, desires: Any, num_regions: int) -> dict[str, Any]:
    model = request["model"]
    if request["simulations"]:
        uncertain = planner.plan(model, region, desires, simulations=request["simulations"], num_results=1,
                                 num_regions=num_regions, percentiles=(50,))  # fmt: skip
        best = uncertain.least_regret[0]
    else:
        best = planner.plan_certain(model, region, desires, num_results=1, num_regions=num_regions)[0]
    candidate = best.candidate_clusters
    clusters = []
    for c in candidate.regional:
        clusters.append(_cluster(c, "regional"))
    for zone, c in enumerate(candidate.zonal, start=1):
        clusters.append(_cluster(c, f"zone {zone}"))
    services = [{"service": s.service_type, "annual_cost": round(float(s.annual_cost), 2)}
                for s in candidate.services]  # fmt: skip
    requirements = [_requirement(r, "regional") for r in best.requirements.regional]
    requirements += [_requirement(r, "per zone") for r in best.requirements.zonal[:1]]
    return {"clusters": {"clusters": clusters, "services": services,
                         "annual_cost": round(float(candidate.total_annual_cost), 2)},
            "requirements": requirements}  # fmt: skip


def _cluster(c: Any, scope: str) -> dict[str, Any]:
    name = c.instance.name
    return {"cluster": c.cluster_type, "scope": scope, "instance": name, "family": name.split(".")[0],
            "count": c.count, "annual_cost": round(float(c.annual_cost), 2),
            "drives": [f"{d.name} {d.size_gib} GiB" for d in c.attached_drives]}  # fmt: skip


def _requirement(r: Any, scope: str) -> dict[str, Any]:
    return {"type": r.requirement_type, "scope": scope, "cpu_cores": round(r.cpu_cores.mid, 1),
            "mem_gib": round(r.mem_gib.mid, 1), "network_mbps": round(r.network_mbps.mid, 1),
            "disk_gib": round(r.disk_gib.mid, 1)}  # fmt: skip


def warm() -> None:
    """Load the planner and its catalog (a worker does it once, before any request)."""
    try:
        from service_capacity_modeling.capacity_planner import planner
        from service_capacity_modeling.hardware import shapes
    except ImportError:
        return
    _ = shapes.hardware.regions, planner.models
