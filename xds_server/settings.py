"""The xds_server's settings and their defaults (one place, next to the model).

Every input the server accepts is bounded here: each limit has its default and says
what happens when it is hit. Nothing else in the server hard-codes a bound.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

DEFAULT_XDS = "127.0.0.1:18000"
DEFAULT_ADMIN = "127.0.0.1:18001"
# The join port: TLS without a client certificate, for a new host's first
# SignCertificate with a join token (see xds_server/security/server_tls.py).
DEFAULT_JOIN = "127.0.0.1:18002"
DEFAULT_CERT_TTL_S = 24 * 3600.0
# The admin API's second door, in the data dir: an owner-only Unix socket on which
# `dgw` sends the tokens it finds on disk (a loopback port can be anyone's).
ADMIN_SOCKET_FILE = "admin.sock"
# ``${VAR}`` in a shard file reads only variables that match one of ``allowed_env``'s
# patterns (shell-style; default: ``DGW_*``) and are not the platform's own
# (``RESERVED_ENV``): the server's environment (HOME, cloud credentials) and the
# platform's credentials are never readable by whoever can write a shard file.
DEFAULT_ALLOWED_ENV: tuple[str, ...] = ("DGW_*",)
# Variables the platform's own programs read (an operator's $DGW_TOKEN exported in the
# shell that started the server, a sidecar's $DGW_JOIN_TOKEN, ...): never a shard's,
# whatever the patterns say. ``tests/hostile/test_masking.py`` checks that every
# DGW_ variable the code reads is here.
RESERVED_ENV: frozenset[str] = frozenset({
    "DGW_TOKEN", "DGW_SERVER", "DGW_CONTEXT", "DGW_JOIN_TOKEN", "DGW_DATA_DIR", "DGW_ENVOY",
    "DGW_UP_BACKGROUND", "DGW_ACCOUNT", "DGW_REGION", "DGW_STACK",
})  # fmt: skip


class Limits(BaseModel):
    """Bounds on every input. Hitting one is a clear, bounded error, never a hang."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # --- shard files (refused as a rejection naming the file; running config stays)
    # Checked with stat() before reading: a 50 MB file never reaches the parser.
    shard_file_bytes: int = 1024 * 1024
    # Nesting of mappings/sequences; a real shard is under 10 deep. Checked on the
    # event stream before anything is built, so 2,000 nested `[` cost microseconds.
    yaml_depth: int = 32
    # Nodes of the document once every alias is expanded. Aliases are allowed (an
    # `env: &common` reused by several DALs is legitimate), but a document that
    # expands beyond this is refused before it is built (the 487-byte alias bomb
    # expands to ~10^8 nodes).
    yaml_nodes: int = 50_000
    # How much of an offending value an error message quotes.
    quoted_chars: int = 80
    # Problems listed per rejected file (the rest are counted).
    problems_per_file: int = 50

    # --- node reports (refused with 400 / INVALID_ARGUMENT; nothing stored)
    report_bytes: int = 64 * 1024  # serialized NodeReport, status map included
    endpoints_per_report: int = 512
    registrations_per_report: int = 64
    name_chars: int = 253  # any name in a report: node id, DAL, listener, registration
    # Reports for shards with no config yet (a sidecar may start before its shard
    # file is accepted) are kept for at most this many nodes in all; more are refused.
    pending_report_nodes: int = 256
    # A node that has not reported for this long is forgotten (its EDS returns to the
    # shard default, its registrations go). Sidecars report every 10 s.
    report_ttl_s: float = 120.0

    # --- Envoy stats from the nodes (``ReportStats``; refused with INVALID_ARGUMENT)
    stats_bytes: int = 256 * 1024  # one serialized sample
    stats_per_sample: int = 2048  # counters + histograms in one sample
    # Kept per node, at least ``stats_min_interval_s`` apart (a closer sample replaces
    # the newest, so the newest is always fresh): 24 × 5 s = two minutes of history.
    stats_samples: int = 24
    stats_min_interval_s: float = 5.0

    # --- admin HTTP API
    admin_connections: int = 512  # open connections; more are closed on accept
    # A connection without a complete request (idle, or still sending its headers)
    # this long after it opened or after its last response is closed: this is both
    # the idle and the header timeout, so slowloris connections never linger.
    admin_idle_timeout_s: float = 10.0
    admin_body_timeout_s: float = 10.0  # a request's body must arrive within this
    admin_body_bytes: int = 128 * 1024  # POST bodies (a report is well under)
    # Nesting of a JSON body (arrays and objects); every body the API takes is under 6
    # deep. Deeper is a 400 (and, for a mutation, an audited refusal).
    admin_json_depth: int = 32


class AdsLimits(BaseModel):
    """What one xDS stream may ask of the server. A stream that goes over a limit is
    ended with gRPC status RESOURCE_EXHAUSTED, its message naming the setting."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Resource names in one request (SotW ``resource_names``; delta subscribe +
    # unsubscribe + ``initial_resource_versions``). Envoy names the endpoints of every
    # cluster of its shard in one EDS request: a shard of thousands stays far below.
    max_names_per_request: Annotated[int, Field(ge=1)] = 10_000
    # Names one stream holds subscribed, over all its types.
    max_names_per_stream: Annotated[int, Field(ge=1)] = 50_000
    # Types one stream may subscribe to that the server does not serve (RTDS, SRDS,
    # VHDS, ...): each is answered empty; only a broken client asks for many.
    max_unserved_types: Annotated[int, Field(ge=0)] = 8
    # Characters of a NACK's ``error_detail.message`` kept in the log and the node
    # status; Envoy's own messages name the problem well within it.
    max_error_detail_chars: Annotated[int, Field(ge=64)] = 2_048
    # Long-lived control streams (ADS of every kind, WatchConfig) one identity may hold
    # at once: a gateway certificate's node, or an application's identity on one host
    # (security/sessions.py). A gateway holds two; more is a client gone wrong.
    max_streams_per_identity: Annotated[int, Field(ge=1)] = 32


class ServerSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    config_dir: Path
    xds: str = DEFAULT_XDS
    admin: str = DEFAULT_ADMIN
    # Where Envoy binds public listeners. Loopback by default so that demos and tests
    # never expose a port; production gateways pass 0.0.0.0 (or ::).
    public_address: str = "127.0.0.1"
    watch: bool = True
    # Where the server keeps what must survive a restart: the config store
    # (store.sqlite3), tokens, the CA and node reports, 0600. None: ``state_dir()``'s
    # default (the one ``dgw`` looks in), one server at a time.
    data_dir: Path | None = None
    # The variables ``${VAR}`` may read: names or shell-style patterns (``DGW_DB_*``);
    # RESERVED_ENV never.
    allowed_env: tuple[str, ...] = DEFAULT_ALLOWED_ENV
    # GET /metrics without a token (for a Prometheus that cannot send one).
    metrics_public: bool = False
    limits: Limits = Field(default_factory=Limits)
    # --- the control channel's security (docs/security.md)
    # Plaintext gRPC, no CA, nothing authorized: loopback only, and said loudly.
    insecure: bool = False
    join: str = DEFAULT_JOIN
    # The CA's directory; None: <state dir>/ca, created on first start.
    ca_dir: Path | None = None
    # Lifetime of the certificates the server signs, and of its own.
    cert_ttl_s: Annotated[float, Field(gt=0)] = DEFAULT_CERT_TTL_S
    # Names (DNS or IP) the server's certificate holds besides loopback ones: what
    # remote hosts dial in --server.
    server_names: tuple[str, ...] = ()
    ads_limits: AdsLimits = Field(default_factory=AdsLimits)
    # --- several replicas (docs/ha.md)
    # The config store: None is SQLite in the data dir (one server); ``etcd://h1:2379,
    # h2:2379,h3:2379[/prefix]`` makes this server one replica of several sharing etcd.
    store: str | None = None
    # This replica's name in etcd (owners, reports); None: HOSTNAME-PID.
    replica_id: str | None = None
    # How long what hangs on a replica's lease outlives it (its sidecars' reports, the
    # jobs it owns), and how long a dead host's report stays: its EDS and discovery
    # entries go within this after its sidecar's connection ends.
    lease_ttl_s: Annotated[float, Field(ge=2)] = 10.0
    # Connections to the control port are closed after this long (±10 % jitter, then
    # a grace for their streams), so nodes spread over the replicas again after one
    # comes back. None: never (one server).
    max_connection_age_s: Annotated[float, Field(gt=0)] | None = None
    max_connection_age_grace_s: Annotated[float, Field(ge=0)] = 30.0
    # New xDS streams started per second at most (a reconnect storm after a replica
    # dies waits its turn instead of starving the streams already served); 0: no pace.
    stream_starts_per_s: Annotated[float, Field(ge=0)] = 500.0

    def ca_directory(self) -> Path:
        return self.ca_dir.absolute() if self.ca_dir is not None else self.state_dir() / "ca"

    def state_dir(self) -> Path:
        """The data directory: ``--data-dir``, else ``$DGW_DATA_DIR``, else
        ``~/.local/share/dgw`` (``default_data_dir``: where ``dgw`` looks for a local
        server's admin token and CA too). One server per directory: a second one
        started on it fails at once, naming it."""
        from xds_server.store.data_dir import default_data_dir

        return (self.data_dir if self.data_dir is not None else default_data_dir()).absolute()
