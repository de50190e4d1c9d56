"""What a stream's protocol state machine reports to the server loop (which logs it
and writes the payloads). Kept apart so the state machines stay free of I/O."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from xds_server.resources import MESSAGE_TYPES

# The type URLs we serve, each mapped to our own string object: per-stream tables key
# on these instead of holding every request's copy (10,000 streams × 5 types adds up).
KNOWN_TYPES: dict[str, str] = {t: t for t in MESSAGE_TYPES}

RequestKind = Literal["subscribe", "ack", "nack", "stale", "unknown_type"]


@dataclass(frozen=True, slots=True)
class Received:
    """A request, classified. ``version`` is what the node ACKed, rejected or has."""

    kind: RequestKind
    type_url: str
    version: str
    message: str = ""


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A response to write: ``payload`` is the serialized message."""

    type_url: str
    version: str
    nonce: str
    resources: int
    removed: int
    payload: bytes
