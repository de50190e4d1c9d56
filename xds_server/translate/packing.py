"""``google.protobuf.Any`` for the translator's nested configs (filters, RBAC, TLS),
and the one conversion of seconds to a ``Duration``.

Packed with deterministic serialization: a packed message is bytes inside the
resource, so a map in it (RBAC ``policies``) serialized in hash order made the same
config a different resource version in another process. Versions are content hashes
that a restarted server and every replica must agree on, or a reconnecting Envoy is
sent (and briefly re-applies) what it already holds.
"""

from __future__ import annotations

from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import Message


def packed(message: Message) -> any_pb2.Any:
    out = any_pb2.Any()
    out.Pack(message, deterministic=True)
    return out


def duration(seconds: float) -> duration_pb2.Duration:
    out = duration_pb2.Duration()
    out.FromNanoseconds(round(seconds * 1e9))
    return out
