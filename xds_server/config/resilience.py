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

# Streaming methods every gRPC server may have, besides those a DAL declares
# (``stream_methods``): they get no time limit but the caller's own deadline.
DEFAULT_STREAM_METHODS: tuple[str, ...] = ("/grpc.health.v1.Health/Watch",)

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


# --- checks (``semantics.RULES`` runs them; each problem at the key it is about) ----


def check_resilience(cfg: RuntimeConfig) -> list[tuple[str, str]]:
    """Combinations no proxy can carry out, in the effective policy of every DAL (and
    of the shard), reported at the most specific key that set them."""
    found: list[tuple[str, str]] = []
    for _, base, spec in _dal_specs(cfg):
        found.extend(_method_overlap(base, spec.read_methods, spec.idempotent_methods))
    levels: list[tuple[str | None, str]] = [(None, "")]
    levels += [(name, f"{base}.") for name, base, _ in _dal_specs(cfg)]
    for dal, prefix in levels:
        policy = effective_policy(cfg, dal)
        own = dal_spec(cfg, dal) if dal is not None else cfg.resilience
        if dal is not None and own is None and cfg.resilience is None:
            continue  # tier defaults only: consistent by construction (tested)
        found.extend(_timeouts(cfg, dal, prefix, policy))
        found.extend(_hedging(cfg, dal, prefix, policy))
    return list(dict.fromkeys(found))


def _dal_specs(cfg: RuntimeConfig) -> list[tuple[str, str, Any]]:
    specs: list[tuple[str, str, Any]] = [
        (name, f"container_dals.{name}", dal) for name, dal in sorted(cfg.container_dals.items())
    ]
    specs += [(name, f"network_dals.{name}", dal) for name, dal in sorted(cfg.network_dals.items())]
    return specs


def _method_overlap(base: str, reads: list[str] | None, idempotent: list[str] | None) -> list[tuple[str, str]]:
    read_set = set(reads or ())
    return [
        (f"{base}.idempotent_methods.{i}",
         f"{pattern!r} is also in read_methods: idempotent_methods lists writes that are safe to "
         "retry (reads are retried anyway, and may be hedged; writes never are)")
        for i, pattern in enumerate(idempotent or ())
        if pattern in read_set
    ]


def _origin(cfg: RuntimeConfig, dal: str | None, prefix: str, key: str) -> str:
    """Where the effective value of ``key`` comes from, in words."""
    where = _set_at(cfg, dal, prefix, key)
    return f"from {where}" if where else f"the tier {tier_of(cfg)} default"


def _where(cfg: RuntimeConfig, dal: str | None, prefix: str, *keys: str) -> str:
    """The most specific place that sets one of ``keys`` (dotted, under ``resilience``)."""
    for key in keys:
        where = _set_at(cfg, dal, prefix, key)
        if where:
            return where
    return f"{prefix}resilience.{keys[0]}"


def _set_at(cfg: RuntimeConfig, dal: str | None, prefix: str, key: str) -> str | None:
    levels = [(prefix, dal_spec(cfg, dal))] if dal is not None else []
    levels.append(("", cfg.resilience))
    for level_prefix, spec in levels:
        if spec is None:
            continue
        value: Any = spec.model_dump(exclude_unset=True, exclude_none=True)
        for part in key.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if value is not None:
            return f"{level_prefix}resilience.{key}"
    return None


def _seconds(value: float) -> str:
    return f"{value * 1000:g}ms" if value < 1 else f"{value:g}s"


def _timeouts(cfg: RuntimeConfig, dal: str | None, prefix: str, policy: Policy) -> list[tuple[str, str]]:
    found = []
    retries = policy.retries
    if retries.attempts and retries.per_try_timeout_s <= 0:
        found.append((_where(cfg, dal, prefix, "retries.per_try_timeout"),
                      "a per-try timeout must be more than 0s (set retries.attempts: 0 for no retries)"))
    elif retries.attempts and policy.timeout_s and retries.per_try_timeout_s >= policy.timeout_s:
        found.append((
            _where(cfg, dal, prefix, "retries.per_try_timeout", "timeout"),
            f"the per-try timeout ({_seconds(retries.per_try_timeout_s)}, "
            f"{_origin(cfg, dal, prefix, 'retries.per_try_timeout')}) must be less than the request "
            f"timeout ({_seconds(policy.timeout_s)}, {_origin(cfg, dal, prefix, 'timeout')}), which "
            "includes every try: no retry could ever start (lower retries.per_try_timeout, "
            "or set retries.attempts: 0)",
        ))
    o = policy.outlier_detection
    for key, value in (("interval", o.interval_s), ("base_ejection_time", o.base_ejection_time_s)):
        if value <= 0:
            found.append((_where(cfg, dal, prefix, f"outlier_detection.{key}"), f"{key} must be more than 0s"))
    return found


def _hedging(cfg: RuntimeConfig, dal: str | None, prefix: str, policy: Policy) -> list[tuple[str, str]]:
    """Hedging set on purpose must be able to happen; a tier's default simply does not
    apply where there are no reads to hedge."""
    where = _where(cfg, dal, prefix, "hedging")
    own = dal_spec(cfg, dal) if dal is not None else None
    explicit = (own is not None and own.hedging) or (
        cfg.resilience is not None and cfg.resilience.hedging and (own is None or own.hedging is None)
    )
    if not (policy.hedging and explicit):
        return []
    if not policy.retries.attempts:
        return [(where, "hedging needs retries.attempts of 1 or more: a hedge is a retry sent "
                        "before the first try has failed")]
    if dal is None:
        return []
    spec = cfg.container_dals.get(dal) or cfg.network_dals.get(dal)
    if spec is not None and not spec.read_methods and _serves_grpc(cfg, dal):
        return [(where, f"DAL {dal!r} declares no read_methods, and only reads are hedged (writes "
                        f"never are): add {prefix}read_methods, or set {prefix}resilience.hedging: false")]
    return []


# --- in words (``dgw render`` prints it above the resources) -------------------------


def describe(policy: Policy) -> str:
    """One line: the effective policy as a person reads it."""
    r, b, o, s = policy.retries, policy.circuit_breakers, policy.outlier_detection, policy.load_shedding
    timeout = _seconds(policy.timeout_s) if policy.timeout_s else "none"
    if r.attempts:
        budget = f"budget {r.budget_percent:g}% (min {r.min_retry_concurrency})" if r.budget_percent else \
            f"at most {b.max_retries} at once"
        retries = f"{r.attempts} x {_seconds(r.per_try_timeout_s)} per try, {budget}"
    else:
        retries = "none"
    limit = s.rate_limit
    rate = f"{limit.requests_per_second}/s burst {limit.burst}" if limit else "none"
    return (
        f"timeout {timeout}; retries {retries}; hedging {'on (reads)' if policy.hedging and r.attempts else 'off'}; "
        f"breakers {b.max_connections} conn/{b.max_pending_requests} pending/{b.max_requests} requests "
        f"(low priority {s.low_priority_share:g}%); ejection after {o.consecutive_5xx} 5xx or "
        f"{o.consecutive_gateway_failure} gateway errors for {_seconds(o.base_ejection_time_s)}+, "
        f"at most {o.max_ejection_percent:g}%; rate limit {rate}; adaptive concurrency "
        f"{'on' if s.adaptive_concurrency else 'off'}; priority header {s.priority_header}"
    )


def _serves_grpc(cfg: RuntimeConfig, dal: str) -> bool:
    """Whether ``dal`` serves a public grpc listener (only there are gRPC reads hedged;
    http reads are GET/HEAD/OPTIONS, whatever the DAL declares)."""
    container = cfg.container_dals.get(dal)
    names = set(container.container_listeners) if container else set(cfg.network_dals[dal].listeners)
    public = cfg.proxy_config.public_listeners
    return any(public[name].mode == "grpc" for name in names if name in public)
