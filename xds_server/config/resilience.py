"""Resilience policies: the defaults of each service tier, and the effective policy
of a DAL after the shard's and the DAL's own ``resilience:`` keys are applied.

Precedence is key by key: a DAL's key wins over the shard's, which wins over the
tier's default (``deploy_desires.service_tier``, tier 2 when there are no desires).
``docs/resilience.md`` gives the reasoning behind every value of ``TIER_DEFAULTS``;
a test keeps the two in step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Literal, TypeVar

from .model import DeployDesires, ResilienceSpec, RuntimeConfig, ShardFile, parse_duration

PriorityHeader = Literal["trusted", "any", "off"]

# Set by a trusted caller to ``low`` (or ``high``) to choose a request's priority.
PRIORITY_HEADER = "x-dgw-priority"

# Tiers above the last one in the table (the model allows up to 9) get its defaults.
LAST_TIER = 3


@dataclass(frozen=True)
class Retries:
    attempts: int  # retries after the first try
    per_try_timeout_s: float
    budget_percent: float  # retries active at once, as a share of active requests
    min_retry_concurrency: int  # retries always allowed, whatever the budget says


@dataclass(frozen=True)
class CircuitBreakers:
    max_connections: int
    max_pending_requests: int
    max_requests: int
    max_retries: int  # only without a retry budget (Envoy: a budget overrides it)


@dataclass(frozen=True)
class OutlierDetection:
    consecutive_5xx: int
    consecutive_gateway_failure: int
    interval_s: float
    base_ejection_time_s: float
    max_ejection_percent: float


@dataclass(frozen=True)
class RateLimit:
    requests_per_second: int
    burst: int

    @property
    def tokens_per_fill(self) -> int:
        # Envoy refills at most every 50 ms: take enough tokens per fill to keep it so.
        return math.ceil(self.requests_per_second / 20)

    @property
    def fill_interval_s(self) -> float:
        return self.tokens_per_fill / self.requests_per_second


@dataclass(frozen=True)
class LoadShedding:
    rate_limit: RateLimit | None
    adaptive_concurrency: bool
    low_priority_share: float  # percent of the breakers' budget low-priority traffic may use
    priority_header: PriorityHeader


@dataclass(frozen=True)
class Policy:
    """The effective resilience of one DAL (``timeout_s`` 0: no limit, for streams)."""

    timeout_s: float
    retries: Retries
    hedging: bool
    circuit_breakers: CircuitBreakers
    outlier_detection: OutlierDetection
    load_shedding: LoadShedding


def _tier(
    timeout: float, retries: Retries, hedging: bool, breakers: CircuitBreakers,
    outlier: OutlierDetection, adaptive: bool,
) -> Policy:
    return Policy(timeout, retries, hedging, breakers, outlier, LoadShedding(
        rate_limit=None, adaptive_concurrency=adaptive, low_priority_share=50.0, priority_header="trusted",
    ))


# Each value's reason is in docs/resilience.md. No tier has a rate limit: the platform
# does not know a DAL's capacity, so a limit is the shard owner's to set.
TIER_DEFAULTS: dict[int, Policy] = {
    0: _tier(1.0, Retries(2, 0.25, 20.0, 3), True, CircuitBreakers(1024, 128, 1024, 3),
             OutlierDetection(5, 3, 1.0, 10.0, 50.0), adaptive=True),
    1: _tier(2.0, Retries(2, 0.5, 20.0, 3), True, CircuitBreakers(1024, 256, 1024, 3),
             OutlierDetection(5, 3, 2.0, 10.0, 50.0), adaptive=True),
    2: _tier(5.0, Retries(2, 1.5, 20.0, 3), False, CircuitBreakers(1024, 512, 1024, 3),
             OutlierDetection(5, 5, 2.0, 5.0, 50.0), adaptive=False),
    3: _tier(10.0, Retries(1, 5.0, 10.0, 2), False, CircuitBreakers(512, 512, 512, 2),
             OutlierDetection(10, 10, 5.0, 5.0, 30.0), adaptive=False),
}


def tier_of(cfg: RuntimeConfig) -> int:
    desires = cfg.deploy_desires if isinstance(cfg, ShardFile) else None
    return (desires or DeployDesires()).service_tier


def tier_defaults(tier: int) -> Policy:
    return TIER_DEFAULTS[min(tier, LAST_TIER)]


def dal_spec(cfg: RuntimeConfig, dal: str) -> ResilienceSpec | None:
    spec = cfg.container_dals.get(dal) or cfg.network_dals.get(dal)
    return spec.resilience if spec is not None else None


def effective_policy(cfg: RuntimeConfig, dal: str | None = None) -> Policy:
    """The policy of ``dal`` (or of the shard as a whole when None)."""
    policy = tier_defaults(tier_of(cfg))
    for spec in (cfg.resilience, dal_spec(cfg, dal) if dal is not None else None):
        if spec is not None:
            policy = apply_spec(policy, spec)
    return policy


def apply_spec(policy: Policy, spec: ResilienceSpec) -> Policy:
    """``policy`` with every key ``spec`` sets replaced (a nested key by nested key)."""
    given = spec.model_dump(exclude_unset=True)
    retries = _merge(policy.retries, given.get("retries"), per_try_timeout="per_try_timeout_s")
    breakers = _merge(policy.circuit_breakers, given.get("circuit_breakers"))
    outlier = _merge(policy.outlier_detection, given.get("outlier_detection"),
                     interval="interval_s", base_ejection_time="base_ejection_time_s")
    shedding = policy.load_shedding
    shedding_given = given.get("load_shedding") or {}
    if "rate_limit" in shedding_given:
        # A rate limit is one setting: given whole (or null, to turn an inherited one off).
        limit = shedding_given.pop("rate_limit")
        shedding = replace(shedding, rate_limit=_rate_limit(limit))
    shedding = _merge(shedding, shedding_given)
    timeout = policy.timeout_s if given.get("timeout") is None else parse_duration(given["timeout"])
    hedging = policy.hedging if given.get("hedging") is None else bool(given["hedging"])
    return Policy(timeout, retries, hedging, breakers, outlier, shedding)


def _rate_limit(given: dict[str, Any] | None) -> RateLimit | None:
    if given is None:
        return None
    rps = int(given["requests_per_second"])
    burst = given.get("burst")
    # Without a burst, a tenth of a second's worth: enough to absorb jitter, too little
    # to let a spike through.
    return RateLimit(rps, int(burst) if burst is not None else max(1, rps // 10))


_T = TypeVar("_T", Retries, CircuitBreakers, OutlierDetection, LoadShedding)


def _merge(current: _T, given: dict[str, Any] | None, **renamed: str) -> _T:
    if not given:
        return current
    changes: dict[str, Any] = {}
    for key, value in given.items():
        if value is None:
            continue
        if key in renamed:
            changes[renamed[key]] = parse_duration(value)
        else:
            changes[key] = value
    return replace(current, **changes)
