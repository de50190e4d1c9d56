"""The order of a rollout's waves (pure).

Less critical first: tier 3 before 2 before 1 before 0 (the seed's "less critical
tiers deployed first"). A tier above 3 is less critical still and goes before 3 (the
resilience policies give it tier 3's defaults: nothing is more relaxed than 3).
Within a tier, one location after another, the location with the fewest shards first
(the smallest blast radius learns first), ties by name; ``wave_size`` splits a large
tier-location group into waves of at most that many shards.

A shard's location is the first entry of its ``deploy_desires.locations``: its
account, first region and stack (``prod/us-east-1``, ``prod/us-east-1/leader``), or
``unplaced`` without one. The unit of a wave is a shard: a shard deployed in several
regions takes a new version in all of them at once, in the wave of its first one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from xds_server.config.model import DeployDesires

from .model import UNPLACED, Wave


@dataclass(frozen=True)
class Place:
    tier: int
    location: str


def location_of(desires: DeployDesires | None) -> str:
    if desires is None or not desires.locations:
        return UNPLACED
    first = desires.locations[0]
    return "/".join([first.account, first.regions[0], *([first.stack] if first.stack else [])])


def place_of(desires: DeployDesires | None) -> Place:
    tier = desires.service_tier if desires is not None else DeployDesires().service_tier
    return Place(tier, location_of(desires))


def plan_waves(places: Mapping[str, Place], wave_size: int = 0) -> tuple[Wave, ...]:
    groups: dict[tuple[int, str], list[str]] = {}
    for shard, place in places.items():
        groups.setdefault((place.tier, place.location), []).append(shard)
    order = sorted(groups, key=lambda g: (-g[0], len(groups[g]), g[1]))
    waves: list[Wave] = []
    for tier, location in order:
        shards = sorted(groups[(tier, location)])
        size = wave_size if wave_size > 0 else len(shards)
        for start in range(0, len(shards), size):
            waves.append(Wave(len(waves), tier, location, tuple(shards[start:start + size])))
    return tuple(waves)
