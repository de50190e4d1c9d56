"""The gateway IR: what one gateway instance's proxy must do, in the platform's words.

``build.py`` makes it from a runtime config and ``envoy.py`` turns it into Envoy
resources. Everything here is frozen and ordered, so the IR of a config is one value
that tests can compare and the Envoy stage can walk without sorting again. Resource
names are decided here, once, because Envoy links resources by name and the names
must never change between two translations of the same config.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from xds_server.config.resilience import OutlierDetection

Protocol = Literal["grpc", "http", "tcp"]

# "reported": a container DAL on this host; the sidecar reports its endpoints (EDS).
# The others are network DALs, resolved by Envoy itself from the configured host.
Discovery = Literal["reported", "logical_dns", "strict_dns", "static"]

Exposure = Literal["public", "internal"]

# Traffic shares are in basis points (1/100 of a percent), so a percent such as
# 12.5 or 0.25 survives exactly as an integer weight.
FULL_SHARE = 10_000


# Requests of a grpc or http listener are routed by method class, each with its own
# retry policy: reads may be retried and hedged, idempotent writes retried, other
# writes only when they were provably never sent; streams have no time limit but
# the caller's own deadline.
MethodClass = Literal["streams", "reads", "idempotent_writes", "writes"]
METHOD_CLASSES: tuple[MethodClass, ...] = ("streams", "reads", "idempotent_writes", "writes")
WRITE_CLASSES: frozenset[MethodClass] = frozenset({"idempotent_writes", "writes"})


@dataclass(frozen=True)
class HostPort:
    host: str
    port: int


@dataclass(frozen=True)
class UnixSocket:
    """A socket named ``name`` in the gateway's socket directory (never a host path)."""

    name: str


@dataclass(frozen=True)
class Thresholds:
    """Circuit breakers of one routing priority of a cluster; with a retry budget
    (``budget_percent`` not None) Envoy ignores ``max_retries``."""

    max_connections: int
    max_pending_requests: int
    max_requests: int
    max_retries: int
    budget_percent: float | None
    min_retry_concurrency: int


@dataclass(frozen=True)
class Upstream:
    """One DAL serving one listener: an Envoy cluster.

    ``high`` are the breakers of high-priority (the default) requests, ``low`` the
    smaller ones of low-priority requests, which are shed first.
    """

    name: str
    dal: str
    listener: str
    protocol: Protocol
    discovery: Discovery
    connect_timeout_s: float
    target: HostPort | None = None  # network DALs only: where Envoy connects
    high: Thresholds | None = None
    low: Thresholds | None = None
    ejection: OutlierDetection | None = None  # when an endpoint is taken out, for how long


@dataclass(frozen=True)
class Backend:
    """An upstream that takes ``share`` of a listener's traffic."""

    upstream: str
    share: int


@dataclass(frozen=True)
class Mirror:
    """An upstream that gets a copy of ``share`` of a listener's requests.

    ``runtime_key`` lets an operator turn the share up or down on a running Envoy
    during a migration without a config change; None when every request is copied.
    """

    upstream: str
    share: int
    runtime_key: str | None
    method_classes: tuple[MethodClass, ...] = METHOD_CLASSES  # the routes that copy

    @property
    def writes_only(self) -> bool:
        return set(self.method_classes) <= WRITE_CLASSES


@dataclass(frozen=True)
class GrpcMethods:
    """gRPC methods: regular expressions on the ``/package.Service/Method`` path."""

    paths: tuple[str, ...]


@dataclass(frozen=True)
class HttpMethods:
    """HTTP request methods (GET, HEAD...)."""

    methods: tuple[str, ...]


@dataclass(frozen=True)
class Retry:
    """How a route tries a request again. ``per_try_timeout_s`` None: no per-try
    limit; ``hedge``: on a per-try timeout, send another try without cancelling the first."""

    retry_on: str
    attempts: int
    per_try_timeout_s: float | None
    hedge: bool


@dataclass(frozen=True)
class RouteClass:
    """The requests of one method class (``match`` None: every request not matched
    by an earlier class) and what the route does for them."""

    method_class: MethodClass
    match: GrpcMethods | HttpMethods | None
    timeout_s: float  # 0: no limit
    retry: Retry | None


@dataclass(frozen=True)
class LowPriority:
    """Which requests are low priority: those of ``callers`` (SPIFFE IDs), and those
    with the priority header set to low by ``header_setters`` (or by anyone when
    ``header_from_anyone``)."""

    header: str
    callers: tuple[str, ...]
    header_setters: tuple[str, ...]
    header_from_anyone: bool


@dataclass(frozen=True)
class TokenBucket:
    max_tokens: int
    tokens_per_fill: int
    fill_interval_s: float


@dataclass(frozen=True)
class Shedding:
    """What a listener refuses at once: requests over a rate (``rate_limit``), or
    over the concurrency its latency allows (``adaptive_concurrency``)."""

    rate_limit: TokenBucket | None
    adaptive_concurrency: bool


@dataclass(frozen=True)
class Tls:
    """Downstream mutual TLS. The certificate and the trust bundle are SDS secrets that
    the host's sidecar serves to its Envoy (keys never leave the host); a client
    without a certificate chaining to the bundle fails the handshake."""

    certificate: str  # SDS secret name of the listener's certificate and key
    trust_bundle: str  # SDS secret name of the CA certificates clients must chain to
    alpn: tuple[str, ...]


@dataclass(frozen=True)
class Authz:
    """Who may do what on a listener (deny by default), by SPIFFE ID of the peer's
    certificate. ``read_only`` callers may only do reads: HTTP GET/HEAD/OPTIONS, or
    for gRPC the methods matching ``grpc_read_methods`` (regular expressions on the
    ``/package.Service/Method`` path)."""

    read_write: tuple[str, ...]
    read_only: tuple[str, ...]
    grpc_read_methods: tuple[str, ...]


@dataclass(frozen=True)
class Listener:
    """Where the proxy accepts connections for one listener name, and who serves them.

    ``backends`` share the traffic (primary first; their shares add up to
    ``FULL_SHARE``). ``route`` names the HTTP route table of grpc and http listeners.
    ``read_backends``: who serves the reads route instead, when reads are shared
    otherwise (a migration's promotion steps move reads first).
    """

    name: str
    listener: str
    exposure: Exposure
    protocol: Protocol
    bind: HostPort | UnixSocket
    backends: tuple[Backend, ...]
    mirrors: tuple[Mirror, ...] = ()
    route: str | None = None
    tls: Tls | None = None
    authz: Authz | None = None
    route_classes: tuple[RouteClass, ...] = ()
    low_priority: LowPriority | None = None
    shedding: Shedding | None = None
    read_backends: tuple[Backend, ...] | None = None


@dataclass(frozen=True)
class GatewayIR:
    """Listeners and upstreams of one gateway instance, each sorted by name."""

    listeners: tuple[Listener, ...]
    upstreams: tuple[Upstream, ...]
