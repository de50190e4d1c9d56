"""The xds_server's settings and their defaults (one place, next to the model)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict

DEFAULT_XDS = "127.0.0.1:18000"
DEFAULT_ADMIN = "127.0.0.1:18001"


class ServerSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    config_dir: Path
    xds: str = DEFAULT_XDS
    admin: str = DEFAULT_ADMIN
    # Where Envoy binds public listeners. Loopback by default so that demos and tests
    # never expose a port; production gateways pass 0.0.0.0 (or ::).
    public_address: str = "127.0.0.1"
    watch: bool = True
