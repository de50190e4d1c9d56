"""Immutable, pre-encoded snapshots of one shard's Envoy resources.

A ``Snapshot`` holds one ``TypeSnapshot`` per type in ``PUSH_ORDER`` (a type absent
from the translator's ``Resources`` is an empty set: ``Resources`` is the whole desired
state). Every resource is serialized once, here, and its bytes are shared by every
node and every stream. Building a new snapshot reuses the encoded resources, and the
whole ``TypeSnapshot``, of whatever did not change, so the encodings the ADS layer
memoizes on an unchanged type survive edits to other types.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

from google.protobuf.message import Message

from xds_server.cache.encoding import encode_any, encode_resource
from xds_server.cache.versions import content_version, set_version
from xds_server.resources import CLUSTER, LISTENER, MESSAGE_TYPES, PUSH_ORDER, Resources

# Types Envoy subscribes to as a whole (state of the world: absent means removed).
# The other types are requested by name, following what clusters and listeners use.
WILDCARD_TYPES: frozenset[str] = frozenset({CLUSTER, LISTENER})

_T = TypeVar("_T")

# Distinct encodings the ADS layer may memoize per type snapshot (one per distinct set
# of requested names). Nodes of a shard share a few sets; the bound only stops a
# misbehaving client from growing it without limit.
_MEMO_LIMIT = 256


@dataclass(frozen=True, slots=True)
class EncodedResource:
    """One resource, serialized once and wrapped in both response envelopes."""

    name: str
    version: str
    any: bytes  # google.protobuf.Any: an element of DiscoveryResponse.resources
    resource: bytes  # discovery.v3.Resource: an element of DeltaDiscoveryResponse.resources


class TypeSnapshot:
    """One resource type's encoded resources and their set version. Never mutated."""

    __slots__ = ("_memo", "resources", "type_url", "version")

    def __init__(self, type_url: str, resources: dict[str, EncodedResource]) -> None:
        self.type_url = type_url
        self.resources: Mapping[str, EncodedResource] = resources
        self.version = set_version((name, r.version) for name, r in resources.items())
        self._memo: dict[object, object] = {}

    def memoized(self, key: object, compute: Callable[[], _T]) -> _T:
        """Compute once what is derived from this immutable snapshot (e.g. a response body)."""
        try:
            return self._memo[key]  # type: ignore[return-value]
        except KeyError:
            pass
        if len(self._memo) >= _MEMO_LIMIT:
            self._memo.clear()
        value = compute()
        self._memo[key] = value
        return value

    def __repr__(self) -> str:
        return f"TypeSnapshot({self.type_url!r}, n={len(self.resources)}, version={self.version})"


class Snapshot:
    """All resource types of one shard (or one node's view of it). Never mutated."""

    __slots__ = ("types",)

    def __init__(self, types: Mapping[str, TypeSnapshot]) -> None:
        self.types = types

    def __getitem__(self, type_url: str) -> TypeSnapshot:
        return self.types[type_url]

    def versions(self) -> dict[str, str]:
        return {t: self.types[t].version for t in PUSH_ORDER}

    def replace(self, type_snapshot: TypeSnapshot) -> Snapshot:
        """This snapshot with one type swapped, sharing every other type."""
        types = dict(self.types)
        types[type_snapshot.type_url] = type_snapshot
        return Snapshot(types)


def _wrap(type_url: str, name: str, value: bytes, version: str) -> EncodedResource:
    any_bytes = encode_any(type_url, value)
    return EncodedResource(name, version, any_bytes, encode_resource(name, version, any_bytes))


def encode_all(
    type_url: str,
    messages: Mapping[str, Message],
    previous: Mapping[str, EncodedResource] | None = None,
) -> dict[str, EncodedResource]:
    """Encode a type's resources, reusing ``previous`` encodings whose content is unchanged."""
    expected = MESSAGE_TYPES[type_url]
    out: dict[str, EncodedResource] = {}
    for name, message in messages.items():
        if not isinstance(message, expected):
            raise TypeError(
                f"resource {name!r} of type {type_url} is a {type(message).__name__}, "
                f"expected {expected.__name__}"
            )
        value = message.SerializeToString(deterministic=True)
        version = content_version(value)
        old = previous.get(name) if previous is not None else None
        out[name] = old if old is not None and old.version == version else _wrap(
            type_url, name, value, version
        )
    return out


def build_type(
    type_url: str, encoded: dict[str, EncodedResource], previous: TypeSnapshot | None
) -> TypeSnapshot:
    """A type snapshot, or ``previous`` itself when nothing changed (keeping its memo)."""
    built = TypeSnapshot(type_url, encoded)
    if previous is not None and previous.version == built.version:
        return previous
    return built


def build_snapshot(resources: Resources, previous: Snapshot | None = None) -> Snapshot:
    """Encode the translator's ``Resources`` into a snapshot, sharing what ``previous`` had."""
    unknown = set(resources.by_type) - set(PUSH_ORDER)
    if unknown:
        raise ValueError(f"unknown resource type URLs: {sorted(unknown)}")
    types: dict[str, TypeSnapshot] = {}
    for type_url in PUSH_ORDER:
        old = previous[type_url] if previous is not None else None
        encoded = encode_all(type_url, resources.of(type_url), old.resources if old else None)
        types[type_url] = build_type(type_url, encoded, old)
    return Snapshot(types)


def overlay(base: TypeSnapshot, overrides: Mapping[str, EncodedResource]) -> TypeSnapshot:
    """``base`` with the resources of the same name replaced (or added) by ``overrides``."""
    merged = dict(base.resources)
    merged.update(overrides)
    return TypeSnapshot(base.type_url, merged)
