"""Runtime config → gateway IR: the first, pure stage of translation.

Who serves a listener is decided once, by ``listener_topology``; this stage only
names what follows from it (listeners, upstreams, traffic shares, mirrors, and the
effective resilience policies: routes by method class, breakers, ejection, shedding,
priorities) and refuses what the proxy cannot do yet, reporting every reason at once.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from xds_server.config import (
    ConfigError,
    ListenerTopology,
    Problem,
    RuntimeConfig,
    listener_topology,
    parse_network_url,
)
from xds_server.config.model import PublicListener, ShardFile
from xds_server.config.resilience import (
    DEFAULT_STREAM_METHODS,
    PRIORITY_HEADER,
    Policy,
    effective_policy,
)
from xds_server.security.identity import IdentityError, consumer_id
from xds_server.security.providers import (
    DEFAULT_GRPC_READ_METHODS,
    HTTP_READ_METHODS,
    Providers,
    certificate_secret,
    method_pattern_regex,
    trust_bundle_secret,
)

from .ir import (
    FULL_SHARE,
    METHOD_CLASSES,
    WRITE_CLASSES,
    Authz,
    Backend,
    GatewayIR,
    GrpcMethods,
    HostPort,
    HttpMethods,
    Listener,
    LowPriority,
    Mirror,
    Protocol,
    Retry,
    RouteClass,
    Shedding,
    Thresholds,
    Tls,
    TokenBucket,
    UnixSocket,
    Upstream,
)

# Internal listeners are for callers on this host only (a DAL's health check, an
# operator's curl): they must never be reachable from the network.
LOOPBACK = "127.0.0.1"

# What a TLS listener offers in ALPN: gRPC is HTTP/2 only; HTTP takes either.
_ALPN: dict[Protocol, tuple[str, ...]] = {"grpc": ("h2",), "http": ("h2", "http/1.1"), "tcp": ()}

_Names = dict[tuple[str, str], str]  # (DAL, listener) → upstream name

# What may be tried again (Envoy's retry_on). A request that was never sent (no
# connection, or refused by HTTP/2 before the DAL saw it) is safe to send again
# whatever it does. Reads and idempotent writes are also tried again when the try
# failed on the way (a reset, or its per-try timeout: Envoy counts that as a 504,
# a gateway error) or the DAL said it could not serve it (gRPC UNAVAILABLE; for
# http, 502/503/504). gRPC answers are HTTP 200, so gateway-error adds no more for
# them. Never on RESOURCE_EXHAUSTED or CANCELLED: a DAL that sheds load, or a
# caller that gave up, must not get more.
_NEVER_SENT = "connect-failure,refused-stream"
_RETRIABLE: dict[Protocol, str] = {
    "grpc": f"{_NEVER_SENT},reset,gateway-error,unavailable",
    "http": f"{_NEVER_SENT},reset,gateway-error",
    "tcp": "",
}


_DEFAULT_PROVIDERS = Providers()


@dataclass(frozen=True)
class TranslateOptions:
    """What a translation needs besides the config; the defaults are safe for tests."""

    public_address: str = LOOPBACK  # production binds public listeners on 0.0.0.0
    file: str = "<config>"  # names the config in every Problem
    connect_timeout_s: float = 1.0
    providers: Providers = _DEFAULT_PROVIDERS  # what tls_creds / authz names mean here


DEFAULT_OPTIONS = TranslateOptions()


def build_ir(cfg: RuntimeConfig, options: TranslateOptions = DEFAULT_OPTIONS) -> GatewayIR:
    """The gateway IR of ``cfg``; ConfigError lists everything that cannot be translated.

    ``cfg`` has passed the loader's checks (``load_shard*`` run ``check_runtime``, the
    only place they run); this stage adds only what the proxy cannot do yet.
    """
    names = _upstream_names(cfg)
    consumers, consumer_problems = _consumers(cfg, options)
    problems = (
        _unknown_providers(cfg, options)
        + consumer_problems
        + _name_clashes(cfg, names, options.file)
    )
    if problems:
        raise ConfigError(problems)
    listeners = [
        _listener(cfg, t, names, options, consumers) for t in listener_topology(cfg).values()
    ]
    return GatewayIR(
        listeners=tuple(sorted(listeners, key=lambda lst: lst.name)),
        upstreams=_upstreams(cfg, names, options),
    )


def _thresholds(policy: Policy, share: float = 100.0) -> Thresholds:
    """The breakers at ``share`` percent of the policy's (each at least 1)."""
    b, r = policy.circuit_breakers, policy.retries

    def part(n: int) -> int:
        return max(1, int(n * share / 100))

    return Thresholds(
        max_connections=part(b.max_connections),
        max_pending_requests=part(b.max_pending_requests),
        max_requests=part(b.max_requests),
        max_retries=part(b.max_retries),
        budget_percent=r.budget_percent if r.attempts and r.budget_percent > 0 else None,
        min_retry_concurrency=r.min_retry_concurrency,
    )


def _with_policy(upstream: Upstream, policy: Policy) -> Upstream:
    return replace(
        upstream,
        high=_thresholds(policy),
        low=_thresholds(policy, policy.load_shedding.low_priority_share),
        ejection=policy.outlier_detection,
    )


def _upstream_names(cfg: RuntimeConfig) -> _Names:
    names: _Names = {}
    for dal, cdal in cfg.container_dals.items():
        for lname in cdal.container_listeners:
            names[(dal, lname)] = f"dal.{dal}.{lname}"
    for dal, ndal in cfg.network_dals.items():
        for lname in ndal.listeners:
            names[(dal, lname)] = f"net.{dal}.{lname}"
    return names


def _unknown_providers(cfg: RuntimeConfig, options: TranslateOptions) -> list[Problem]:
    """A name the server does not know would be a silent security hole if ignored."""
    problems: list[Problem] = []
    providers = options.providers
    for lname, public in sorted(cfg.proxy_config.public_listeners.items()):
        key = f"proxy_config.public_listeners.{lname}"
        for key_name, name, known in (
            ("tls_creds", public.tls_creds, providers.tls),
            ("authz", public.authz, providers.authz),
        ):
            if name is not None and name not in known:
                allowed = ", ".join(sorted(known)) or "none are configured"
                problems.append(Problem(
                    options.file,
                    f"{key}.{key_name}",
                    f"{key_name} {name[:80]!r} is not a provider of this server; known: {allowed}",
                ))
        if public.authz is not None and public.tls_creds is None:
            problems.append(Problem(
                options.file,
                f"{key}.authz",
                "authz needs tls_creds on the same listener: callers are identified by "
                "their client certificate",
            ))
    return problems


# SPIFFE IDs: (read-write, read-only, always low priority, may set the priority header)
_Consumers = tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...], tuple[str, ...]]


def _consumers(cfg: RuntimeConfig, options: TranslateOptions) -> tuple[_Consumers, list[Problem]]:
    """The SPIFFE IDs of the shard's consumers by group (none when the shard file
    has no deploy desires: authorization then denies everyone)."""
    desires = cfg.deploy_desires if isinstance(cfg, ShardFile) else None
    if desires is None:
        return ((), (), (), ()), []
    groups: dict[str, set[str]] = {"read-write": set(), "read-only": set()}
    low: set[str] = set()
    setters: set[str] = set()
    problems: list[Problem] = []
    for i, consumer in enumerate(desires.consumers):
        try:
            identity = consumer_id(consumer.type, consumer.value, options.providers.trust_domain)
        except IdentityError as e:
            problems.append(Problem(options.file, f"deploy_desires.consumers[{i}].value", str(e)))
            continue
        groups[consumer.group].add(identity.uri)
        if consumer.priority == "low":
            low.add(identity.uri)
        if consumer.may_set_priority:
            setters.add(identity.uri)
    # Read-write includes every read: a caller in both groups is read-write.
    read_only = groups["read-only"] - groups["read-write"]
    # A low-priority consumer is always low: its header changes nothing.
    return (
        tuple(sorted(groups["read-write"])), tuple(sorted(read_only)),
        tuple(sorted(low)), tuple(sorted(setters - low)),
    ), problems


def _name_clashes(cfg: RuntimeConfig, names: _Names, file: str) -> list[Problem]:
    """Dots are allowed in DAL and listener names, so two pairs can read alike
    (``a.b`` + ``c`` and ``a`` + ``b.c``); Envoy would merge their clusters."""
    problems: list[Problem] = []
    owner: dict[str, tuple[str, str]] = {}
    for (dal, lname), name in sorted(names.items()):
        if name not in owner:
            owner[name] = (dal, lname)
            continue
        other_dal, other_lname = owner[name]
        key = (
            f"container_dals.{dal}.container_listeners.{lname}"
            if dal in cfg.container_dals
            else f"network_dals.{dal}.listeners.{lname}"
        )
        problems.append(Problem(
            file,
            key,
            f"its cluster would be named {name!r} like that of DAL {other_dal!r} listener "
            f"{other_lname!r}; rename the DAL or the listener so the names differ",
        ))
    return problems


def _protocol(cfg: RuntimeConfig, lname: str) -> Protocol:
    public = cfg.proxy_config.public_listeners.get(lname)
    return public.mode if public else "tcp"


def _upstreams(cfg: RuntimeConfig, names: _Names, options: TranslateOptions) -> tuple[Upstream, ...]:
    upstreams = [
        Upstream(
            name=names[(dal, lname)],
            dal=dal,
            listener=lname,
            protocol=_protocol(cfg, lname),
            discovery="reported",
            connect_timeout_s=options.connect_timeout_s,
        )
        for dal, cdal in cfg.container_dals.items()
        for lname in cdal.container_listeners
    ]
    for dal, ndal in cfg.network_dals.items():
        for lname, url in ndal.listeners.items():
            target = parse_network_url(url)
            upstreams.append(Upstream(
                name=names[(dal, lname)],
                dal=dal,
                listener=lname,
                protocol=_protocol(cfg, lname),
                discovery=ndal.mode,
                connect_timeout_s=options.connect_timeout_s,
                target=HostPort(target.host, target.port),
            ))
    policies = {dal: effective_policy(cfg, dal) for dal in {u.dal for u in upstreams}}
    return tuple(sorted((_with_policy(u, policies[u.dal]) for u in upstreams), key=lambda u: u.name))


def _listener(
    cfg: RuntimeConfig,
    topo: ListenerTopology,
    names: _Names,
    options: TranslateOptions,
    consumers: _Consumers,
) -> Listener:
    primary = topo.primary
    assert primary is not None, "check_runtime refuses a listener without one primary"
    public = cfg.proxy_config.public_listeners.get(topo.name)
    if public is None:
        # Envoy cannot mirror a TCP stream, so shadow targets get no copy here;
        # split wiring still applies, as on a public tcp listener.
        port = cfg.container_dals[primary].listener_ports()[topo.name]
        return Listener(
            name=f"internal.{topo.name}",
            listener=topo.name,
            exposure="internal",
            protocol="tcp",
            bind=HostPort(LOOPBACK, port),
            backends=_backends(topo, primary, names),
        )
    http = public.mode != "tcp"
    policy = effective_policy(cfg, primary)
    return Listener(
        name=f"public.{topo.name}",
        listener=topo.name,
        exposure="public",
        protocol=public.mode,
        bind=_public_bind(public, options),
        backends=_backends(topo, primary, names),
        mirrors=_mirrors(cfg, topo, primary, names) if http else (),
        read_backends=_read_backends(cfg, topo, primary, names) if http else None,
        route=f"route.{topo.name}" if http else None,
        tls=_tls(public) if public.tls_creds else None,
        authz=_authz(cfg, topo, consumers) if public.authz else None,
        route_classes=_route_classes(cfg, topo, public.mode, policy) if http else (),
        low_priority=_low_priority(public, policy, consumers) if http else None,
        shedding=_shedding(policy) if http else None,
    )


def _tls(public: PublicListener) -> Tls:
    provider = public.tls_creds or ""
    return Tls(certificate_secret(provider), trust_bundle_secret(provider), _ALPN[public.mode])


def _authz(cfg: RuntimeConfig, topo: ListenerTopology, consumers: _Consumers) -> Authz:
    """The DALs serving a listener declare which gRPC methods are reads (the union of
    what they declare; the default when none does)."""
    declared = _declared_by_any(cfg, _serving(topo), "read_methods")
    patterns = sorted(declared) if declared else DEFAULT_GRPC_READ_METHODS
    read_write, read_only, _, _ = consumers
    return Authz(read_write, read_only, tuple(method_pattern_regex(p) for p in patterns))


def _serving(topo: ListenerTopology) -> list[str]:
    """The DALs that answer a listener's requests (shadow targets' answers are dropped)."""
    return [d for d in (topo.primary, *(t for t, _ in topo.splits)) if d is not None]


def _declared_by_all(cfg: RuntimeConfig, dals: list[str], key: str) -> list[str]:
    """The method patterns every DAL in ``dals`` declares under ``key``: a request may
    go to any of them, so it is retried only if all of them say it is safe."""
    common: set[str] | None = None
    for dal in dals:
        spec = cfg.container_dals.get(dal) or cfg.network_dals.get(dal)
        declared = set(getattr(spec, key, None) or ())
        common = declared if common is None else common & declared
    return sorted(common or ())


def _declared_by_any(cfg: RuntimeConfig, dals: list[str], key: str) -> set[str]:
    declared: set[str] = set()
    for dal in dals:
        spec = cfg.container_dals.get(dal) or cfg.network_dals.get(dal)
        declared.update(getattr(spec, key, None) or ())
    return declared


def _route_classes(
    cfg: RuntimeConfig, topo: ListenerTopology, protocol: Protocol, policy: Policy,
) -> tuple[RouteClass, ...]:
    """Streams (gRPC), reads, idempotent writes, then every other request; a class no
    DAL declares is left out. gRPC reads are the methods the DALs declare in
    read_methods (never the authz default: a default guess must not make a stream
    retried)."""
    retries = policy.retries
    classes: list[RouteClass] = []

    def retry(hedge: bool) -> Retry | None:
        if not retries.attempts:
            return None
        return Retry(_RETRIABLE[protocol], retries.attempts, retries.per_try_timeout_s, hedge)

    never_sent = Retry(_NEVER_SENT, retries.attempts, None, False) if retries.attempts else None
    if protocol == "grpc":
        serving = _serving(topo)
        # A stream is one whenever any DAL says so: a time limit would cut it.
        streams = sorted({*DEFAULT_STREAM_METHODS, *_declared_by_any(cfg, serving, "stream_methods")})
        classes.append(RouteClass("streams", GrpcMethods(tuple(method_pattern_regex(p) for p in streams)),
                                  0.0, never_sent))
        reads = _declared_by_all(cfg, serving, "read_methods")
        if reads:
            classes.append(RouteClass("reads", GrpcMethods(tuple(method_pattern_regex(p) for p in reads)),
                                      policy.timeout_s, retry(policy.hedging)))
        idempotent = [p for p in _declared_by_all(cfg, serving, "idempotent_methods") if p not in reads]
        if idempotent:
            classes.append(RouteClass(
                "idempotent_writes", GrpcMethods(tuple(method_pattern_regex(p) for p in idempotent)),
                policy.timeout_s, retry(False),
            ))
    else:
        classes.append(RouteClass("reads", HttpMethods(HTTP_READ_METHODS), policy.timeout_s,
                                  retry(policy.hedging)))
    classes.append(RouteClass("writes", None, policy.timeout_s, never_sent))
    return tuple(classes)


def _low_priority(public: PublicListener, policy: Policy, consumers: _Consumers) -> LowPriority | None:
    """Who is shed first. Identities come from the client certificate, so without
    tls_creds only ``priority_header: any`` can make a request low."""
    header = policy.load_shedding.priority_header
    _, _, low_callers, setters = consumers
    has_identity = public.tls_creds is not None
    low = LowPriority(
        header=PRIORITY_HEADER,
        callers=low_callers if has_identity else (),
        header_setters=setters if has_identity and header == "trusted" else (),
        header_from_anyone=header == "any",
    )
    if not (low.callers or low.header_setters or low.header_from_anyone):
        return None
    return low


def _shedding(policy: Policy) -> Shedding:
    shedding = policy.load_shedding
    limit = shedding.rate_limit
    bucket = None
    if limit is not None:
        bucket = TokenBucket(max(limit.burst, limit.tokens_per_fill), limit.tokens_per_fill,
                             limit.fill_interval_s)
    return Shedding(bucket, shedding.adaptive_concurrency)


def _public_bind(public: PublicListener, options: TranslateOptions) -> HostPort | UnixSocket:
    address = public.address
    if address.socket:
        return UnixSocket(address.socket)
    return HostPort(options.public_address, address.port or 0)


def _share(percent: float) -> int:
    return round(percent * FULL_SHARE / 100)


def _backends(topo: ListenerTopology, primary: str, names: _Names) -> tuple[Backend, ...]:
    """Primary first, then split targets; a zero share is left out because Envoy's
    tcp_proxy refuses a zero weight and a lone backend needs no weights at all."""
    splits = [Backend(names[(target, topo.name)], _share(p)) for target, p in topo.splits]
    rest = FULL_SHARE - sum(b.share for b in splits)
    backends = [Backend(names[(primary, topo.name)], rest), *splits]
    return tuple(b for b in backends if b.share > 0)


def _mirrors(cfg: RuntimeConfig, topo: ListenerTopology, primary: str, names: _Names) -> tuple[Mirror, ...]:
    """A shadow of ``traffic: writes`` copies only the write routes (idempotent or not)."""
    writes_only = {w.target for s, w in cfg.wiring.items()
                   if s in topo.servers and w.mode == "shadow" and w.traffic == "writes"}  # fmt: skip
    mirrors = []
    for target, percent in topo.shadows:
        share = _share(percent)
        runtime_key = None if share == FULL_SHARE else f"dgw.shadow.{primary}.{target}"
        classes = tuple(c for c in METHOD_CLASSES if c in WRITE_CLASSES) if target in writes_only else METHOD_CLASSES
        mirrors.append(Mirror(names[(target, topo.name)], share, runtime_key, classes))
    return tuple(mirrors)


def _read_backends(cfg: RuntimeConfig, topo: ListenerTopology, primary: str,
                   names: _Names) -> tuple[Backend, ...] | None:  # fmt: skip
    """A shadow of writes with ``read_percent``: that share of the reads route goes to
    its target instead (the other backends keep theirs, the primary the rest)."""
    moved = [(w.target, w.read_percent) for s, w in sorted(cfg.wiring.items())
             if s in topo.servers and w.target in topo.servers and w.read_percent]  # fmt: skip
    if not moved:
        return None
    splits = [Backend(names[(target, topo.name)], _share(p)) for target, p in [*topo.splits, *moved]]
    rest = max(0, FULL_SHARE - sum(b.share for b in splits))
    backends = [Backend(names[(primary, topo.name)], rest), *splits]
    return tuple(b for b in backends if b.share > 0)
