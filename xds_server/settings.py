"""The xds_server's settings and their defaults (one place, next to the model)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

DEFAULT_XDS = "127.0.0.1:18000"
DEFAULT_ADMIN = "127.0.0.1:18001"


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


class ServerSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    config_dir: Path
    xds: str = DEFAULT_XDS
    admin: str = DEFAULT_ADMIN
    # Where Envoy binds public listeners. Loopback by default so that demos and tests
    # never expose a port; production gateways pass 0.0.0.0 (or ::).
    public_address: str = "127.0.0.1"
    watch: bool = True
    ads_limits: AdsLimits = AdsLimits()
