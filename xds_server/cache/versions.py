"""Content-hash versions.

A version is a hash of content, never a counter: a control plane that restarts, or a
second replica, computes the same version for the same content, so a reconnecting
Envoy that already has it is not sent it again, and different content can never be
mistaken for what the node has.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

# 64 bits: a collision within one node's history of one resource type is negligible,
# and short versions keep logs, node status and every response small.
_DIGEST_SIZE = 8


def content_version(data: bytes) -> str:
    """Version of one resource: the hash of its deterministic serialization."""
    return hashlib.blake2b(data, digest_size=_DIGEST_SIZE).hexdigest()


def set_version(items: Iterable[tuple[str, str]]) -> str:
    """Version of a set of resources: the hash of their sorted ``(name, version)`` pairs.

    Names are part of the hash, so adding or removing a resource changes it even when
    every remaining resource is unchanged.
    """
    h = hashlib.blake2b(digest_size=_DIGEST_SIZE)
    for name, version in sorted(items):
        h.update(name.encode())
        h.update(b"\0")
        h.update(version.encode())
        h.update(b"\n")
    return h.hexdigest()


EMPTY_VERSION: str = set_version(())
