"""Page tokens (GetItems) and cursors (ScanItems): where a read continues.

A token names the read it belongs to (namespace, record, and a digest of the fields
that must not change between pages) and a position: after (record id, key), or inside
the value of (record id, key) at a byte offset, with the version of that value, so a
value that changed between two pages is noticed (``ABORTED``: read it again) instead
of being stitched from two writes. Tokens are opaque to clients: ``kv1.`` and URL-safe
base64 of a small JSON object; anything else is refused with ``INVALID_ARGUMENT``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from .engines.base import Version
from .errors import invalid

_PREFIX = b"kv1."
MAX_TOKEN_BYTES = 8192


@dataclass(frozen=True)
class Position:
    """After ``key`` of record ``record_id``; or, with ``version``, inside that item's
    value at byte ``offset``."""

    record_id: str
    key: bytes
    offset: int = 0
    version: Version | None = None


@dataclass(frozen=True)
class PageToken:
    namespace: str
    record_id: str
    """The record a GetItems reads; "" for a scan."""
    digest: str
    position: Position


def request_digest(*parts: bytes) -> str:
    """What ties a token to its read: the fields that must stay the same."""
    h = hashlib.sha256()
    for part in parts:
        h.update(len(part).to_bytes(8, "big") + part)
    return h.hexdigest()[:16]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode()


def encode(token: PageToken) -> bytes:
    p = token.position
    body: dict[str, Any] = {"n": token.namespace, "r": token.record_id, "d": token.digest,
                            "i": p.record_id, "k": _b64(p.key)}  # fmt: skip
    if p.version is not None:
        body |= {"o": p.offset, "t": p.version.write_time_us, "w": _b64(p.version.writer)}
    return _PREFIX + base64.urlsafe_b64encode(json.dumps(body, separators=(",", ":")).encode())


def decode(data: bytes, *, field: str, namespace: str, record_id: str, digest: str) -> PageToken:
    """The token in ``data`` if it belongs to this read; INVALID_ARGUMENT otherwise."""
    bad = f"{field} is not a token this DAL gave out for this read"
    if len(data) > MAX_TOKEN_BYTES or not data.startswith(_PREFIX):
        raise invalid(bad)
    try:
        body = json.loads(base64.urlsafe_b64decode(data[len(_PREFIX):]))
        position = Position(
            record_id=_str(body["i"]),
            key=base64.urlsafe_b64decode(_str(body["k"])),
            offset=_int(body.get("o", 0)),
            version=None if "t" not in body else Version(_int(body["t"]), base64.urlsafe_b64decode(_str(body["w"]))),
        )
        token = PageToken(_str(body["n"]), _str(body["r"]), _str(body["d"]), position)
    except (ValueError, KeyError, TypeError, binascii.Error):
        raise invalid(bad) from None
    if (token.namespace, token.record_id) != (namespace, record_id):
        raise invalid(f"{field} belongs to another read (namespace {token.namespace!r}, "
                      f"id {token.record_id!r}); start without one")  # fmt: skip
    if token.digest != digest:
        raise invalid(f"{field} was given for a read with other options (predicate, with_write_times); "
                      "send the same request with only the token changed")  # fmt: skip
    if position.offset < 0:
        raise invalid(bad)
    return token


def _str(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError
    return value


def _int(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError
    return value
