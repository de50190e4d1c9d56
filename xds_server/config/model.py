"""The declarative configuration of one shard, in exactly the seed's YAML shape.

Two documents describe a shard: the *runtime config* (one gateway instance's goal
state: proxy listeners, DAL containers, network DALs, wiring, registrations) and the
*deploy desires* (capacity, tier, versions, locations, owners, consumers). Both are
plain pydantic models; cross-field rules live in ``semantics.py`` so that every rule
can report the exact key path it is about.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from common.names import LISTENER_SOCKETS, is_socket_name

from .errors import quote

# Defaults live here, next to the models (STYLE.md: one place per program).
DEFAULT_HEALTHCHECK_INTERVAL = "30s"
DEFAULT_HEALTHCHECK_TIMEOUT = "30s"
DEFAULT_HEALTHCHECK_RETRIES = 3
DEFAULT_HEALTHCHECK_START_PERIOD = "0s"
DEFAULT_SHADOW_PERCENT = 100.0

_NAME = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}"
_DURATION = re.compile(r"(?:(\d+(?:\.\d+)?)(h|ms|m|s|us))+")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(h|ms|m|s|us)")
_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 0.000001}


class _Strict(BaseModel):
    """Unknown keys are errors: a typo must never be silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


def parse_duration(value: str) -> float:
    """docker-compose style durations ("1m30s", "500ms", "10s") in seconds."""
    text = value.strip()
    if not _DURATION.fullmatch(text):
        raise ValueError(f"{quote(value)} is not a duration: use forms like 10s, 500ms, 1m30s")
    return sum(float(n) * _UNIT_SECONDS[u] for n, u in _DURATION_PART.findall(text))


def _port(value: int | str) -> int:
    if isinstance(value, bool):
        raise ValueError("a port must be a number from 1 to 65535")
    if isinstance(value, str):
        if not value.strip().isdigit():
            raise ValueError(f"{quote(value)} is not a port: a port is a number from 1 to 65535")
        value = int(value.strip())
    if not 1 <= value <= 65535:
        raise ValueError(f"{value} is out of range: a port is a number from 1 to 65535")
    return value


def _checked_port(value: int | str) -> int | str:
    _port(value)
    return value


def _scalar_env(value: object) -> object:
    if isinstance(value, (dict, list)):
        kind = "a mapping" if isinstance(value, dict) else "a list"
        raise ValueError(f"an env value must be a string, number or boolean, not {kind}")
    return value


def _command_words(value: object) -> object:
    # YAML reads `[CMD, true]` as a boolean; a command word is always text.
    if isinstance(value, list):
        return [str(v).lower() if isinstance(v, bool) else str(v) if isinstance(v, (int, float)) else v for v in value]
    return value


PortValue = Annotated[int | str, AfterValidator(_checked_port)]


class ListenAddress(_Strict):
    """Where a public listener binds: a TCP port on all addresses, or a Unix socket
    named ``socket`` in the gateway's socket directory."""

    port: int | None = None
    socket: str | None = None

    def __str__(self) -> str:
        return self.socket if self.socket else str(self.port)


def parse_listen_path(value: int | str) -> ListenAddress:
    if isinstance(value, str) and "/" in value:
        raise ValueError(
            f"{quote(value)} is a path on the gateway host; a listener's Unix socket is a name "
            f"ending in .sock (e.g. api.sock), made in the gateway's own socket directory "
            f"(<state dir>/<shard>-<node>/{LISTENER_SOCKETS}/): a shard file may not place files on the host"
        )
    if isinstance(value, str) and value.endswith(".sock"):
        if not is_socket_name(value):
            raise ValueError(f"{quote(value)} is not a socket name: a letter or digit, then letters, "
                             "digits, _ . or -, ending in .sock (at most 105 characters)")  # fmt: skip
        return ListenAddress(socket=value)
    if isinstance(value, str) and not value.strip().isdigit():
        raise ValueError(f"{quote(value)} is neither a port (1-65535) nor a Unix socket name (NAME.sock)")
    return ListenAddress(port=_port(value))


class PublicListener(_Strict):
    """A host listener of the proxy, forwarded to DAL listeners of the same name."""

    mode: Literal["grpc", "http", "tcp"]
    path: int | str
    tls_creds: str | None = None
    authz: str | None = None

    @field_validator("path")
    @classmethod
    def _check_path(cls, v: int | str) -> int | str:
        parse_listen_path(v)
        return v

    @property
    def address(self) -> ListenAddress:
        return parse_listen_path(self.path)


class ProxyConfig(_Strict):
    public_listeners: dict[str, PublicListener] = Field(default_factory=dict)

    @field_validator("public_listeners")
    @classmethod
    def _names(cls, v: dict[str, PublicListener]) -> dict[str, PublicListener]:
        for name in v:
            if not re.fullmatch(_NAME, name):
                raise ValueError(f"listener name {quote(name)} must match {_NAME}")
        return v


class Healthcheck(_Strict):
    """docker-compose's healthcheck block: run by Docker (or the process runtime)."""

    test: Annotated[list[str] | str, BeforeValidator(_command_words)]
    interval: str = DEFAULT_HEALTHCHECK_INTERVAL
    timeout: str = DEFAULT_HEALTHCHECK_TIMEOUT
    retries: int = Field(default=DEFAULT_HEALTHCHECK_RETRIES, ge=0)
    start_period: str = DEFAULT_HEALTHCHECK_START_PERIOD
    disable: bool = False

    @field_validator("test")
    @classmethod
    def _check_test(cls, v: list[str] | str) -> list[str] | str:
        if isinstance(v, list):
            if not v:
                raise ValueError("test must not be empty")
            if v[0] not in ("CMD", "CMD-SHELL", "NONE"):
                raise ValueError(
                    f"test must start with CMD, CMD-SHELL or NONE (got {quote(v[0])}); "
                    "or give a string to run with the shell"
                )
            if v[0] != "NONE" and len(v) < 2:
                raise ValueError(f"{v[0]} needs a command after it")
        return v

    @field_validator("interval", "timeout", "start_period")
    @classmethod
    def _check_duration(cls, v: str) -> str:
        parse_duration(v)
        return v

    def command(self) -> list[str]:
        """The test as Docker's ``Test`` list (``CMD-SHELL`` for a plain string)."""
        return ["CMD-SHELL", self.test] if isinstance(self.test, str) else list(self.test)


EnvValue = Annotated[str | int | float | bool | None, BeforeValidator(_scalar_env)]


_GRPC_METHOD = re.compile(r"/[A-Za-z0-9_.*]+/[A-Za-z0-9_*]+")


def _grpc_method_pattern(value: str) -> str:
    if not _GRPC_METHOD.fullmatch(value):
        raise ValueError(
            f"{value[:80]!r} is not a gRPC method pattern: write /package.Service/Method, "
            "with * for any characters within one part (e.g. /dgw.kv.v1.KeyValue/Get*)"
        )
    return value


_DAL_API = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:/-]{0,127}")


def _dal_api(value: str) -> str:
    if not _DAL_API.fullmatch(value):
        raise ValueError(f"{value[:80]!r} is not an API name: write a word like dgw.kv.v1 (letters, digits, "
                         "_ . : / -, at most 128 characters)")  # fmt: skip
    return value


# The API a DAL serves (e.g. ``dgw.kv.v1``): a migration moves data only between DALs
# of one API. Without it, the gRPC services its ``read_methods`` name, then its image.
DalApi = Annotated[str, AfterValidator(_dal_api)]

# gRPC methods a read-only consumer may call (``authz``); the default is in
# ``xds_server.security.providers.DEFAULT_GRPC_READ_METHODS``.
GrpcMethodPattern = Annotated[str, AfterValidator(_grpc_method_pattern)]


# Envoy's own limits: its counts and limits are uint32, its durations at most 10,000 years.
UINT32_MAX = 2**32 - 1
ENVOY_DURATION_MAX_S = 315_576_000_000


def _duration_text(value: str) -> str:
    if parse_duration(value) > ENVOY_DURATION_MAX_S:
        raise ValueError(f"{quote(value)} is too long: at most {ENVOY_DURATION_MAX_S}s (Envoy's limit)")
    return value


Duration = Annotated[str, AfterValidator(_duration_text)]


class RetriesSpec(_Strict):
    """How a failed or slow request is tried again (unset keys inherit)."""

    attempts: int | None = Field(default=None, ge=0, le=10)
    per_try_timeout: Duration | None = None
    budget_percent: float | None = Field(default=None, ge=0, le=100)
    min_retry_concurrency: int | None = Field(default=None, ge=0, le=UINT32_MAX)


class CircuitBreakersSpec(_Strict):
    """Envoy's circuit breakers of each DAL cluster (unset keys inherit)."""

    max_connections: int | None = Field(default=None, ge=1, le=UINT32_MAX)
    max_pending_requests: int | None = Field(default=None, ge=1, le=UINT32_MAX)
    max_requests: int | None = Field(default=None, ge=1, le=UINT32_MAX)
    max_retries: int | None = Field(default=None, ge=1, le=UINT32_MAX)


class OutlierDetectionSpec(_Strict):
    """When an endpoint of a DAL is ejected from its load balancing (unset keys inherit)."""

    consecutive_5xx: int | None = Field(default=None, ge=1, le=UINT32_MAX)
    consecutive_gateway_failure: int | None = Field(default=None, ge=1, le=UINT32_MAX)
    interval: Duration | None = None
    base_ejection_time: Duration | None = None
    max_ejection_percent: float | None = Field(default=None, ge=0, le=100)


class RateLimitSpec(_Strict):
    """A token bucket per listener: ``requests_per_second`` sustained, ``burst`` at once."""

    requests_per_second: int = Field(ge=1, le=UINT32_MAX)
    burst: int | None = Field(default=None, ge=1, le=UINT32_MAX)


class LoadSheddingSpec(_Strict):
    """What a listener refuses at once when it is overloaded (unset keys inherit)."""

    rate_limit: RateLimitSpec | None = None
    adaptive_concurrency: bool | None = None
    low_priority_share: float | None = Field(default=None, gt=0, le=100)
    priority_header: Literal["trusted", "any", "off"] | None = None


class ResilienceSpec(_Strict):
    """Timeouts, retries, hedging, breakers, ejection and shedding; each key not set
    here comes from the next level (DAL > shard > the service tier's defaults)."""

    timeout: Duration | None = None
    retries: RetriesSpec | None = None
    hedging: bool | None = None
    circuit_breakers: CircuitBreakersSpec | None = None
    outlier_detection: OutlierDetectionSpec | None = None
    load_shedding: LoadSheddingSpec | None = None


class ContainerDal(_Strict):
    """A DAL run as a container (or a local process) on every gateway instance."""

    image: str | None = None
    container_cmd: str | list[str] | None = None
    container_listeners: dict[str, PortValue] = Field(default_factory=dict)
    env: dict[str, EnvValue] = Field(default_factory=dict)
    healthcheck: Healthcheck | None = None
    read_methods: list[GrpcMethodPattern] | None = None
    idempotent_methods: list[GrpcMethodPattern] | None = None
    stream_methods: list[GrpcMethodPattern] | None = None
    resilience: ResilienceSpec | None = None
    api: DalApi | None = None

    @field_validator("container_listeners")
    @classmethod
    def _ports(cls, v: dict[str, int | str]) -> dict[str, int | str]:
        for name in v:
            if not re.fullmatch(_NAME, name):
                raise ValueError(f"listener name {quote(name)} must match {_NAME}")
        return v

    def listener_ports(self) -> dict[str, int]:
        return {name: _port(p) for name, p in self.container_listeners.items()}

    def env_strings(self) -> dict[str, str]:
        """Env values as the strings a process sees (YAML true → "true", null → "")."""
        out: dict[str, str] = {}
        for k, v in self.env.items():
            if v is None:
                out[k] = ""
            elif isinstance(v, bool):
                out[k] = "true" if v else "false"
            else:
                out[k] = str(v)
        return out


NETWORK_SCHEMES = {
    "postgresql": ("tcp", 5432),
    "postgres": ("tcp", 5432),
    "mysql": ("tcp", 3306),
    "tcp": ("tcp", None),
    "http": ("http", 80),
    "grpc": ("grpc", None),
}


class NetworkDal(_Strict):
    """A DAL reached over the network (e.g. an RDS endpoint), not run on the host."""

    listeners: dict[str, str] = Field(default_factory=dict)
    mode: Literal["logical_dns", "strict_dns", "static"] = "logical_dns"
    read_methods: list[GrpcMethodPattern] | None = None
    idempotent_methods: list[GrpcMethodPattern] | None = None
    stream_methods: list[GrpcMethodPattern] | None = None
    resilience: ResilienceSpec | None = None
    api: DalApi | None = None


class Wiring(_Strict):
    """How a source DAL's traffic is shared with a target DAL.

    shadow: every request to the source is also sent to the target (fire and forget);
    ``percent`` samples the mirrored share. split: ``percent`` of the source's
    traffic goes to the target instead.
    """

    mode: Literal["shadow", "split"]
    target: str
    percent: float | None = Field(default=None, ge=0, le=100)
    # Which requests the wiring takes on gRPC listeners: all, or only writes (the
    # methods not in the serving DALs' ``read_methods``): a data migration mirrors
    # only what changes data.
    traffic: Literal["all", "writes"] = "all"
    # With ``mode: shadow`` and ``traffic: writes``: this share of READ requests is
    # served by the target instead (a migration's promotion steps).
    read_percent: float | None = Field(default=None, ge=0, le=100)

    @model_validator(mode="after")
    def _split_needs_percent(self) -> Wiring:
        if self.mode == "split" and self.percent is None:
            raise ValueError("split wiring needs percent (0-100): the share sent to the target")
        if self.read_percent is not None and (self.mode != "shadow" or self.traffic != "writes"):
            raise ValueError("read_percent moves reads of a shadow of writes: it needs mode: shadow "
                             "and traffic: writes")  # fmt: skip
        return self

    @property
    def share(self) -> float:
        if self.percent is not None:
            return self.percent
        return DEFAULT_SHADOW_PERCENT


class Registration(_Strict):
    """Service-discovery names this instance is registered under when healthy."""

    address: str
    mode: Literal["nflx-discovery", "dns", "static"] = "nflx-discovery"

    def addresses(self) -> list[str]:
        return [a.strip() for a in self.address.split(",") if a.strip()]


class RuntimeConfig(_Strict):
    """One gateway instance's goal state (the seed's "runtime configuration")."""

    proxy_config: ProxyConfig = Field(default_factory=ProxyConfig)
    container_dals: dict[str, ContainerDal] = Field(default_factory=dict)
    network_dals: dict[str, NetworkDal] = Field(default_factory=dict)
    wiring: dict[str, Wiring] = Field(default_factory=dict)
    registrations: list[Registration] = Field(default_factory=list)
    resilience: ResilienceSpec | None = None

    @field_validator("container_dals", "network_dals")
    @classmethod
    def _dal_names(cls, v: dict[str, object]) -> dict[str, object]:
        for name in v:
            if not re.fullmatch(_NAME, name):
                raise ValueError(f"DAL name {quote(name)} must match {_NAME}")
        return v


# --- deploy desires --------------------------------------------------------------


class Interval(_Strict):
    low: float = Field(ge=0)
    mid: float = Field(ge=0)
    high: float = Field(ge=0)

    @model_validator(mode="after")
    def _ordered(self) -> Interval:
        if not self.low <= self.mid <= self.high:
            raise ValueError("an interval needs low <= mid <= high")
        return self


class QueryPattern(_Strict):
    access_pattern: Literal["latency", "throughput"] = "latency"
    estimated_read_per_second: Interval | None = None
    estimated_write_per_second: Interval | None = None


class DataShape(_Strict):
    estimated_state_size_gib: Interval | None = None
    reserved_instance_app_mem_gib: float | None = Field(default=None, ge=0)


class Capacity(_Strict):
    model_name: str
    query_pattern: QueryPattern = Field(default_factory=QueryPattern)
    data_shape: DataShape = Field(default_factory=DataShape)


class Artifact(_Strict):
    kind: Literal["branch", "tag", "sha", "version"]
    value: str | None = None
    sha: str | None = None

    @model_validator(mode="after")
    def _has_ref(self) -> Artifact:
        if not (self.value or self.sha):
            raise ValueError("an artifact needs value (a branch, tag or version) or sha")
        return self


class VersionSet(_Strict):
    artifacts: dict[str, Artifact] = Field(default_factory=dict)


class Location(_Strict):
    account: str
    regions: list[str] = Field(min_length=1)
    stack: str | None = None


class Owner(_Strict):
    type: Literal["google-group", "pager", "email", "slack"]
    value: str


class Consumer(_Strict):
    type: Literal["account-app", "app", "spiffe"]
    value: str
    group: Literal["read-write", "read-only"]
    priority: Literal["high", "low"] = "high"
    may_set_priority: bool = False


class DeployDesires(_Strict):
    capacity: Capacity | None = None
    service_tier: int = Field(default=2, ge=0, le=9)
    version_set: VersionSet = Field(default_factory=VersionSet)
    locations: list[Location] = Field(default_factory=list)
    owners: list[Owner] = Field(default_factory=list)
    consumers: list[Consumer] = Field(default_factory=list)


class DeployFile(_Strict):
    deploy_desires: DeployDesires


class ShardFile(RuntimeConfig):
    """A shard file in the server's config dir: runtime keys, optionally with desires."""

    deploy_desires: DeployDesires | None = None
    # A config with no public listener, replacing one that had some while Envoys of
    # the shard are connected, takes their traffic away: the server refuses it unless
    # the file says so here (an empty or truncated file can never say it by accident).
    # Not part of the runtime config the sidecars receive.
    allow_no_listeners: bool = False

    def runtime(self) -> RuntimeConfig:
        return RuntimeConfig(**{k: getattr(self, k) for k in RuntimeConfig.model_fields})
