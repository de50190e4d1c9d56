"""Resilience in the IR: method classes, tiers, precedence, priorities and shedding."""

from __future__ import annotations

from dataclasses import replace

import pytest

from xds_server.config import ConfigError, RuntimeConfig, load_shard_text
from xds_server.config.resilience import TIER_DEFAULTS, check_resilience, effective_policy
from xds_server.translate import build_ir
from xds_server.translate.ir import GatewayIR, GrpcMethods, Listener, Mirror

GET = "/dgw.kv.v1.KeyValue/GetItems"
PUT = "/dgw.kv.v1.KeyValue/PutItems"


def _cfg(text: str) -> RuntimeConfig:
    return load_shard_text(text, "t.yaml", env={})


def _listener(gateway: GatewayIR, name: str = "public.api") -> Listener:
    return {lst.name: lst for lst in gateway.listeners}[name]


def _kv(extra: str = "", tier: int = 2, dal_extra: str = "") -> RuntimeConfig:
    return _cfg(f"""
proxy_config:
  public_listeners:
    api: {{mode: grpc, path: 8980}}
container_dals:
  kv:
    container_listeners: {{api: 8980}}
    read_methods: ["{GET}"]
    idempotent_methods: ["{PUT}"]
{dal_extra}
{extra}
deploy_desires:
  service_tier: {tier}
""")


def test_grpc_routes_split_reads_idempotent_writes_and_other_writes() -> None:
    classes = {c.method_class: c for c in _listener(build_ir(_kv(tier=0))).route_classes}
    assert list(classes) == ["streams", "reads", "idempotent_writes", "writes"]
    reads, idempotent, writes = classes["reads"], classes["idempotent_writes"], classes["writes"]
    assert isinstance(reads.match, GrpcMethods) and reads.match.paths == (r"/dgw\.kv\.v1\.KeyValue/GetItems",)
    assert reads.retry is not None and reads.retry.hedge and "reset" in reads.retry.retry_on
    assert idempotent.retry is not None and not idempotent.retry.hedge and "unavailable" in idempotent.retry.retry_on
    # Other writes: never hedged, retried only when they never reached the DAL.
    assert writes.match is None
    assert writes.retry is not None and writes.retry.retry_on == "connect-failure,refused-stream"
    assert not writes.retry.hedge and writes.retry.per_try_timeout_s is None
    for c in classes.values():
        assert "resource-exhausted" not in (c.retry.retry_on if c.retry else "")


def test_streams_have_no_time_limit_and_are_retried_only_when_never_sent() -> None:
    cfg = _kv(tier=0, dal_extra='    stream_methods: ["/dgw.kv.v1.KeyValue/Watch*"]')
    streams = _listener(build_ir(cfg)).route_classes[0]
    assert streams.method_class == "streams" and streams.timeout_s == 0
    assert isinstance(streams.match, GrpcMethods)
    assert streams.match.paths == (r"/dgw\.kv\.v1\.KeyValue/Watch[^/]*", r"/grpc\.health\.v1\.Health/Watch")
    assert streams.retry is not None and streams.retry.retry_on == "connect-failure,refused-stream"
    assert not streams.retry.hedge


def test_undeclared_reads_are_never_retried_as_reads() -> None:
    gateway = build_ir(_cfg("""
proxy_config:
  public_listeners:
    api: {mode: grpc, path: 8980}
container_dals:
  kv:
    container_listeners: {api: 8980}
"""))
    assert [c.method_class for c in _listener(gateway).route_classes] == ["streams", "writes"]


@pytest.mark.parametrize("tier", [0, 1, 2, 3, 7])
def test_each_tier_has_its_defaults(tier: int) -> None:
    policy = TIER_DEFAULTS[min(tier, 3)]
    gateway = build_ir(_kv(tier=tier))
    reads = _listener(gateway).route_classes[1]
    assert reads.method_class == "reads"
    assert reads.timeout_s == policy.timeout_s
    assert reads.retry is not None and reads.retry.per_try_timeout_s == policy.retries.per_try_timeout_s
    assert reads.retry.hedge == policy.hedging
    (upstream,) = gateway.upstreams
    assert upstream.high is not None and upstream.high.max_requests == policy.circuit_breakers.max_requests
    assert upstream.high.budget_percent == policy.retries.budget_percent
    shedding = _listener(gateway).shedding
    assert shedding is not None and shedding.adaptive_concurrency == policy.load_shedding.adaptive_concurrency


def test_tier_defaults_pass_their_own_checks() -> None:
    for tier in TIER_DEFAULTS:
        assert check_resilience(_kv(tier=tier, extra="resilience: {}")) == []
        policy = TIER_DEFAULTS[tier]
        assert policy.retries.per_try_timeout_s < policy.timeout_s


def test_dal_beats_shard_beats_tier_key_by_key() -> None:
    cfg = _kv(
        tier=0,
        extra="resilience: {timeout: 3s, retries: {attempts: 1, per_try_timeout: 1s}}",
        dal_extra="    resilience: {retries: {per_try_timeout: 500ms}, circuit_breakers: {max_requests: 10}}",
    )
    policy = effective_policy(cfg, "kv")
    assert policy.timeout_s == 3.0  # shard
    assert policy.retries.attempts == 1  # shard
    assert policy.retries.per_try_timeout_s == 0.5  # DAL
    assert policy.retries.budget_percent == TIER_DEFAULTS[0].retries.budget_percent  # tier
    assert policy.circuit_breakers.max_requests == 10  # DAL
    assert policy.circuit_breakers.max_pending_requests == TIER_DEFAULTS[0].circuit_breakers.max_pending_requests
    (upstream,) = build_ir(cfg).upstreams
    assert upstream.high is not None and upstream.low is not None
    assert (upstream.high.max_requests, upstream.low.max_requests) == (10, 5)  # low share 50 %


def test_a_rate_limit_becomes_a_token_bucket_refilled_at_most_every_50ms() -> None:
    cfg = _kv(extra="resilience: {load_shedding: {rate_limit: {requests_per_second: 30}}}")
    shedding = _listener(build_ir(cfg)).shedding
    assert shedding is not None and shedding.rate_limit is not None
    bucket = shedding.rate_limit
    assert bucket.fill_interval_s >= 0.05
    assert bucket.tokens_per_fill / bucket.fill_interval_s == pytest.approx(30)
    off = _kv(extra="resilience: {load_shedding: {rate_limit: {requests_per_second: 30}}}",
              dal_extra="    resilience: {load_shedding: {rate_limit: null}}")
    assert effective_policy(off, "kv").load_shedding.rate_limit is None


SECURE = """
proxy_config:
  public_listeners:
    api: {mode: grpc, path: 8980, tls_creds: metatron}
    plain: {mode: grpc, path: 8981}
container_dals:
  kv:
    container_listeners: {api: 8980, plain: 8981}
%s
deploy_desires:
  consumers:
    - {type: account-app, value: prod-batch, group: read-write, priority: low}
    - {type: account-app, value: prod-ui, group: read-write, may_set_priority: true}
    - {type: account-app, value: prod-api, group: read-write}
"""


def test_low_priority_callers_by_identity_and_trusted_header_setters() -> None:
    gateway = build_ir(_cfg(SECURE % ""))
    low = _listener(gateway).low_priority
    assert low is not None
    assert low.callers == ("spiffe://dgw.local/prod/batch",)
    assert low.header_setters == ("spiffe://dgw.local/prod/ui",)
    assert not low.header_from_anyone
    # No client certificate, no identity: nobody can be low.
    assert _listener(gateway, "public.plain").low_priority is None


def test_priority_header_any_and_off() -> None:
    anyone = build_ir(_cfg(SECURE % "resilience: {load_shedding: {priority_header: any}}"))
    plain = _listener(anyone, "public.plain").low_priority
    assert plain is not None and plain.header_from_anyone and not plain.callers
    off = build_ir(_cfg(SECURE % "resilience: {load_shedding: {priority_header: 'off'}}"))
    low = _listener(off).low_priority
    assert low is not None and low.header_setters == () and low.callers == ("spiffe://dgw.local/prod/batch",)


def test_a_mirror_can_be_limited_to_writes() -> None:
    mirror = Mirror("dal.next.api", 10_000, None)
    assert not mirror.writes_only
    assert replace(mirror, method_classes=("idempotent_writes", "writes")).writes_only


def test_a_writes_only_mirror_is_left_off_the_read_routes() -> None:
    from xds_server.resources import ROUTE
    from xds_server.translate import to_resources

    cfg = _cfg(f"""
proxy_config:
  public_listeners:
    api: {{mode: grpc, path: 8980}}
container_dals:
  kv: {{container_listeners: {{api: 8980}}, read_methods: ["{GET}"]}}
  next: {{container_listeners: {{api: 8981}}, read_methods: ["{GET}"]}}
wiring:
  kv: {{mode: shadow, target: next}}
""")
    gateway = build_ir(cfg)
    api = _listener(gateway)
    writes_only = tuple(replace(m, method_classes=("idempotent_writes", "writes")) for m in api.mirrors)
    gateway = replace(gateway, listeners=(replace(api, mirrors=writes_only),))
    (table,) = to_resources(gateway).by_type[ROUTE].values()
    mirrored = {r.name: [m.cluster for m in r.route.request_mirror_policies] for r in table.virtual_hosts[0].routes}
    assert mirrored == {"streams": [], "reads": [], "writes": ["dal.next.api"]}


def test_hedging_set_on_purpose_needs_grpc_reads_to_hedge() -> None:
    no_reads = """
proxy_config:
  public_listeners:
    api: {mode: grpc, path: 8980}
    web: {mode: http, path: 8080}
container_dals:
  kv: {container_listeners: {api: 8980}}
  site: {container_listeners: {web: 8080}}
resilience: {hedging: true}
"""
    with pytest.raises(ConfigError) as e:
        _cfg(no_reads)
    keys = [p.path for p in e.value.problems]
    # The http DAL hedges GET/HEAD/OPTIONS: nothing to declare there.
    assert keys == ["resilience.hedging"]
    assert "DAL 'kv' declares no read_methods" in e.value.problems[0].message
