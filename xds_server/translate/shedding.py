"""Load shedding of a listener in Envoy's words: a local rate limit (a token bucket)
and adaptive concurrency (a limit that follows the DAL's latency).

A shed request is answered at once, never queued: HTTP 503 with ``retry-after``; a
gRPC caller gets RESOURCE_EXHAUSTED from the rate limit and UNAVAILABLE from the
concurrency limit (Envoy's gRPC local reply for 503).
"""

from __future__ import annotations

from envoy.config.accesslog.v3 import accesslog_pb2
from envoy.config.core.v3 import base_pb2
from envoy.extensions.filters.http.adaptive_concurrency.v3 import adaptive_concurrency_pb2 as ac_pb2
from envoy.extensions.filters.http.local_ratelimit.v3 import local_rate_limit_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.type.v3 import http_status_pb2, percent_pb2, token_bucket_pb2
from google.protobuf import wrappers_pb2

from . import ir
from .packing import duration, packed

LOCAL_RATE_LIMIT = "envoy.filters.http.local_ratelimit"
ADAPTIVE_CONCURRENCY = "envoy.filters.http.adaptive_concurrency"

_UNAVAILABLE = http_status_pb2.HttpStatus(code=http_status_pb2.StatusCode.ServiceUnavailable)
_EVERY_REQUEST = percent_pb2.FractionalPercent(numerator=100, denominator=percent_pb2.FractionalPercent.HUNDRED)


def http_filters(lst: ir.Listener, shedding: ir.Shedding) -> list[hcm_pb2.HttpFilter]:
    """The rate limit first (cheapest, and it keeps a flood from skewing the latency
    samples), then the concurrency limit."""
    filters = []
    if shedding.rate_limit is not None:
        filters.append(hcm_pb2.HttpFilter(
            name=LOCAL_RATE_LIMIT, typed_config=packed(_rate_limit(lst, shedding.rate_limit)),
        ))
    if shedding.adaptive_concurrency:
        filters.append(hcm_pb2.HttpFilter(
            name=ADAPTIVE_CONCURRENCY, typed_config=packed(_adaptive_concurrency(lst)),
        ))
    return filters


def _rate_limit(lst: ir.Listener, bucket: ir.TokenBucket) -> local_rate_limit_pb2.LocalRateLimit:
    def always(key: str) -> base_pb2.RuntimeFractionalPercent:
        # An operator may lower it on a running Envoy (runtime key) without a config change.
        return base_pb2.RuntimeFractionalPercent(default_value=_EVERY_REQUEST, runtime_key=key)

    return local_rate_limit_pb2.LocalRateLimit(
        # Counters read <listener>.http_local_rate_limit.{enforced,ok,...}: dgw stats
        # reports them under the listener.
        stat_prefix=lst.listener,
        status=_UNAVAILABLE,
        token_bucket=token_bucket_pb2.TokenBucket(
            max_tokens=bucket.max_tokens,
            tokens_per_fill=wrappers_pb2.UInt32Value(value=bucket.tokens_per_fill),
            fill_interval=duration(bucket.fill_interval_s),
        ),
        filter_enabled=always(f"dgw.rate_limit.{lst.listener}.enabled"),
        filter_enforced=always(f"dgw.rate_limit.{lst.listener}.enforced"),
        rate_limited_as_resource_exhausted=True,
    )


def _adaptive_concurrency(lst: ir.Listener) -> ac_pb2.AdaptiveConcurrency:
    """Envoy's gradient controller: the limit follows the ratio of the DAL's lowest
    latency (measured every 30 s at a low concurrency) to its recent p90."""
    gradient = ac_pb2.GradientControllerConfig(
        sample_aggregate_percentile=percent_pb2.Percent(value=90),
        concurrency_limit_params=ac_pb2.GradientControllerConfig.ConcurrencyLimitCalculationParams(
            max_concurrency_limit=wrappers_pb2.UInt32Value(value=1000),
            concurrency_update_interval=duration(0.1),
        ),
        min_rtt_calc_params=ac_pb2.GradientControllerConfig.MinimumRTTCalculationParams(
            interval=duration(30),
            request_count=wrappers_pb2.UInt32Value(value=50),
            jitter=percent_pb2.Percent(value=10),
            min_concurrency=wrappers_pb2.UInt32Value(value=3),
            buffer=percent_pb2.Percent(value=25),
        ),
    )
    return ac_pb2.AdaptiveConcurrency(
        gradient_controller_config=gradient,
        enabled=base_pb2.RuntimeFeatureFlag(
            default_value=wrappers_pb2.BoolValue(value=True),
            runtime_key=f"dgw.adaptive_concurrency.{lst.listener}.enabled",
        ),
        concurrency_limit_exceeded_status=_UNAVAILABLE,
    )


def local_reply_config() -> hcm_pb2.LocalReplyConfig:
    """Every 503 Envoy answers itself (shed, breaker open, no healthy endpoint) tells
    the caller when to come back."""
    overloaded = accesslog_pb2.AccessLogFilter(status_code_filter=accesslog_pb2.StatusCodeFilter(
        comparison=accesslog_pb2.ComparisonFilter(
            op=accesslog_pb2.ComparisonFilter.EQ,
            value=base_pb2.RuntimeUInt32(default_value=503, runtime_key="dgw.shed_status"),
        ),
    ))
    retry_after = base_pb2.HeaderValueOption(
        header=base_pb2.HeaderValue(key="retry-after", value="1"),
        append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD,
    )
    return hcm_pb2.LocalReplyConfig(mappers=[hcm_pb2.ResponseMapper(filter=overloaded, headers_to_add=[retry_after])])
