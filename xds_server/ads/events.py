"""What a stream's protocol state machine reports to the server loop (which logs it
and writes the payloads). Kept apart so the state machines stay free of I/O."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from xds_server.resources import MESSAGE_TYPES

# The type URLs we serve, each mapped to our own string object: per-stream tables key
# on these instead of holding every request's copy (10,000 streams × 5 types adds up).
KNOWN_TYPES: dict[str, str] = {t: t for t in MESSAGE_TYPES}

# Longer than any xDS type URL; a longer one is refused rather than held.
_TYPE_URL_LIMIT = 256

RequestKind = Literal["subscribe", "ack", "nack", "stale"]


@dataclass(frozen=True, slots=True)
class Received:
    """A request, classified. ``version`` is what the node ACKed, rejected or has;
    ``served`` is False for a type the server has no resources of (answered empty)."""

    kind: RequestKind
    type_url: str
    version: str
    message: str = ""
    served: bool = True


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A response to write: ``payload`` is the serialized message."""

    type_url: str
    version: str
    nonce: str
    resources: int
    removed: int
    payload: bytes


class Refused(Exception):
    """A request the stream will not serve: the server ends the stream with the gRPC
    status ``code`` and this message, which says what to change."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def checked_type_url(type_url: str) -> str:
    """Our own copy of a served type URL, or the request's, once it is known sane."""
    known = KNOWN_TYPES.get(type_url)
    if known is not None:
        return known
    if not type_url:
        raise Refused("INVALID_ARGUMENT", "the request has no type_url")
    if len(type_url) > _TYPE_URL_LIMIT:
        raise Refused(
            "INVALID_ARGUMENT",
            f"type_url is {len(type_url)} characters long; at most {_TYPE_URL_LIMIT} are allowed",
        )
    return type_url


def bounded(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, saying how much was left out."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(text) - limit} more characters)"


def too_many(
    what: str, count: int, limit: int, setting: str, unit: str = "resource names"
) -> Refused:
    return Refused(
        "RESOURCE_EXHAUSTED",
        f"{what}: {count} {unit}; the limit is {limit} (ads_limits.{setting})",
    )
