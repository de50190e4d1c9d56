"""The sidecar's settings and their defaults (one place, next to the model)."""

from __future__ import annotations

import re
import socket
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from common.hostport import join_host_port, split_addresses
from common.names import NODE_ID_RULE, SHARD_RULE, is_node_id, is_shard

DEFAULT_SERVER = "127.0.0.1:18000"
# The xds_server's join port (its --join), where a new host's first certificate is
# signed; by default on --server's host.
DEFAULT_JOIN_PORT = 18002
DEFAULT_XDS_SERVER_ID = "spiffe://dgw.local/xds-server"
DEFAULT_STATE_DIR = Path(".work/sidecar")
DEFAULT_DAL_PORTS = (20000, 29999)  # below Linux's ephemeral range (32768-60999)

# Reconcile loop: a timer pass even when nothing happened, so drift is always caught.
DEFAULT_RESYNC_S = 5.0
# Restart backoff: the first restart is immediate, then base·2^(n-1) up to max; a DAL
# that stays healthy for reset_after forgets its failures (Docker's restart policy).
DEFAULT_BACKOFF_BASE_S = 0.5
DEFAULT_BACKOFF_MAX_S = 30.0
DEFAULT_BACKOFF_RESET_S = 10.0
# Docker marks a container unhealthy after `retries` failed checks but never acts on
# it; the agent restarts one that stays unhealthy this long.
DEFAULT_UNHEALTHY_GRACE_S = 5.0
DEFAULT_STOP_GRACE_S = 5.0
# Control channel: reconnect backoff and a periodic re-report (the server may restart).
DEFAULT_RECONNECT_BASE_S = 0.25
DEFAULT_RECONNECT_MAX_S = 5.0
DEFAULT_REPORT_EVERY_S = 10.0
# Envoy stats to the server (migration steps and rollout waves are judged from them).
DEFAULT_STATS_EVERY_S = 2.0
DEFAULT_RPC_TIMEOUT_S = 3.0
# Envoy: how long to drain on shutdown, and its restart backoff.
DEFAULT_DRAIN_S = 1.0
DEFAULT_ENVOY_BACKOFF_MAX_S = 10.0
DEFAULT_CRASH_LOG_LINES = 20

RuntimeName = Literal["auto", "docker", "process"]
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


def agent_dir_name(shard: str, node_id: str) -> str:
    """The agent's own directory under ``--state-dir`` (``dgw logs`` finds its files there)."""
    return _UNSAFE.sub("_", f"{shard}-{node_id}")

NetworkMode = Literal["host", "bridge"]



class SidecarSettings(BaseModel):
    """Everything ``dgw sidecar`` is told on its command line."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    server: str = DEFAULT_SERVER
    shard: str
    node_id: str = Field(default_factory=socket.gethostname)
    runtime: RuntimeName = "auto"
    network_mode: NetworkMode = "host"
    # Where Envoy and the DALs' host ports live; DALs bind here in host mode.
    bind_address: str = "127.0.0.1"
    # The address registered in discovery: where clients reach this host's gateway.
    host_address: str = "127.0.0.1"
    state_dir: Path = DEFAULT_STATE_DIR
    dal_ports: tuple[int, int] = DEFAULT_DAL_PORTS
    # Run DALs (and their health checks) as this user (name or uid; the sidecar must be
    # root), in containers as its UID:GID; None: the sidecar's own user (docs/security.md).
    dal_user: str | None = None
    envoy: bool = True
    envoy_binary: str | None = None
    envoy_log_level: str = "warning"
    delta_xds: bool = False
    stop_dals_on_exit: bool = False
    # Where this host runs, as deploy desires' locations name places: reported to the
    # server, which groups status and rollouts by it.
    account: str = ""
    region: str = ""
    stack: str = ""

    resync_s: float = DEFAULT_RESYNC_S
    backoff_base_s: float = DEFAULT_BACKOFF_BASE_S
    backoff_max_s: float = DEFAULT_BACKOFF_MAX_S
    backoff_reset_s: float = DEFAULT_BACKOFF_RESET_S
    unhealthy_grace_s: float = DEFAULT_UNHEALTHY_GRACE_S
    stop_grace_s: float = DEFAULT_STOP_GRACE_S
    reconnect_base_s: float = DEFAULT_RECONNECT_BASE_S
    reconnect_max_s: float = DEFAULT_RECONNECT_MAX_S
    report_every_s: float = DEFAULT_REPORT_EVERY_S
    stats_every_s: float = DEFAULT_STATS_EVERY_S
    rpc_timeout_s: float = DEFAULT_RPC_TIMEOUT_S
    drain_s: float = DEFAULT_DRAIN_S
    envoy_backoff_max_s: float = DEFAULT_ENVOY_BACKOFF_MAX_S
    crash_log_lines: int = DEFAULT_CRASH_LOG_LINES

    # --- the control channel's security (docs/security.md)
    # Plaintext to an --insecure server: no certificate, no SDS for Envoy's xDS.
    insecure: bool = False
    # HOST:PORT of the server's join port; None: --server's host, DEFAULT_JOIN_PORT.
    join_server: str | None = None
    # The one-time join token for this host's first certificate (never logged).
    join_token: SecretStr | None = None
    join_token_file: Path | None = None
    # The server's CA certificate, to check the server on the first contact; after it,
    # the bundle the server returned (kept in the state dir) is used.
    trust_bundle: Path | None = None
    # The ``files`` provider: certificate, key and bundle from disk instead of the CA.
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_bundle: Path | None = None
    # The SPIFFE ID the xds_server's certificate must carry.
    xds_server_id: str = DEFAULT_XDS_SERVER_ID

    @field_validator("server")
    @classmethod
    def _server(cls, v: str) -> str:
        split_addresses(v, "--server")  # one HOST:PORT, or several replicas' IP:PORT
        return v

    @field_validator("shard")
    @classmethod
    def _shard(cls, v: str) -> str:
        if not is_shard(v):
            raise ValueError(f"{v[:80]!r} is not a shard name: {SHARD_RULE}")
        return v

    @field_validator("node_id")
    @classmethod
    def _node_id(cls, v: str) -> str:
        if not is_node_id(v):
            raise ValueError(f"{v[:80]!r} is not a node id: {NODE_ID_RULE} (the host name is the default)")
        return v

    @field_validator("join_server")
    @classmethod
    def _join_server(cls, v: str | None) -> str | None:
        if v is not None:
            split_addresses(v, "--join-server")
        return v

    @property
    def server_name(self) -> str:
        """The DNS name every replica's certificate holds (``xds-server.TRUST_DOMAIN``),
        checked when ``server`` names several replicas."""
        return f"xds-server.{urlsplit(self.xds_server_id).netloc}"

    @property
    def node_dir(self) -> Path:
        """This host's own state: ``STATE_DIR/SHARD-NODE`` (both are plain words)."""
        return self.state_dir / agent_dir_name(self.shard, self.node_id)

    @property
    def join_address(self) -> str:
        if self.join_server is not None:
            return self.join_server
        return ",".join(join_host_port(host, DEFAULT_JOIN_PORT) for host, _ in split_addresses(self.server))

    @model_validator(mode="after")
    def _files(self) -> SidecarSettings:
        given = [f for f in ("tls_cert", "tls_key", "tls_bundle") if getattr(self, f) is not None]
        if given and len(given) != 3:
            raise ValueError("the files provider needs all of --tls-cert, --tls-key and --tls-bundle")
        return self

    @model_validator(mode="after")
    def _ports(self) -> SidecarSettings:
        low, high = self.dal_ports
        if not 1 <= low <= high <= 65535:
            raise ValueError(f"dal_ports {low}-{high} is not a port range within 1-65535")
        return self
