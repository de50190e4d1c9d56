"""Discovery responses assembled from pre-encoded bytes.

Protobuf's wire format is a sequence of fields, and a parser takes them in any order,
so a response is written by concatenating encoded fields: the version and type URL,
every resource's pre-encoded envelope from the snapshot (``EncodedResource.any`` or
``.resource``), and the stream's nonce. Nothing is re-serialized per node; a
state-of-the-world body (everything but the nonce) is even built once per type
snapshot and set of requested names, then shared by every stream that asks for it.
The ADS methods are registered with an identity response serializer, so these bytes
go to gRPC as they are. Field numbers come from the generated descriptors.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable
from dataclasses import dataclass

from envoy.service.discovery.v3.discovery_pb2 import DeltaDiscoveryResponse, DiscoveryResponse
from google.protobuf.message import Message

from xds_server.cache.encoding import len_field, len_tag
from xds_server.cache.snapshot import TypeSnapshot
from xds_server.cache.versions import set_version


def _tag(message: type[Message], name: str) -> bytes:
    return len_tag(message.DESCRIPTOR.fields_by_name[name].number)


_VERSION_INFO = _tag(DiscoveryResponse, "version_info")
_RESOURCES = _tag(DiscoveryResponse, "resources")
_TYPE_URL = _tag(DiscoveryResponse, "type_url")
_NONCE = _tag(DiscoveryResponse, "nonce")

_D_SYSTEM_VERSION_INFO = _tag(DeltaDiscoveryResponse, "system_version_info")
_D_RESOURCES = _tag(DeltaDiscoveryResponse, "resources")
_D_TYPE_URL = _tag(DeltaDiscoveryResponse, "type_url")
_D_REMOVED_RESOURCES = _tag(DeltaDiscoveryResponse, "removed_resources")
_D_NONCE = _tag(DeltaDiscoveryResponse, "nonce")


@dataclass(frozen=True, slots=True)
class SotwBody:
    """A state-of-the-world response without its nonce, and what it holds."""

    version: str
    count: int
    body: bytes


def sotw_body(snapshot: TypeSnapshot, names: frozenset[str] | None) -> SotwBody:
    """The response for a wildcard request (``names`` None) or for exactly ``names``.

    A by-name response carries only the requested resources that exist, and its
    version is the hash of exactly those: it changes when, and only when, what this
    node would receive changes (another cluster's endpoints changing does not), and it
    differs whenever a node asks for a different set. A wildcard response's version is
    the type's version, the one ``SnapshotCache.shard_versions`` reports.

    By-name bodies are memoized weakly on their name set: a set (shared by the streams
    that ask for it, see ``sotw.NameSets``) takes its bodies along when the last of
    those streams closes, so no client's names outlive its stream.
    """
    if names is None:
        return snapshot.memoized(("sotw", None), lambda: _build_sotw(snapshot, None))
    bodies = snapshot.memoized("sotw-by-names", _weak_bodies)
    body = bodies.get(names)
    if body is None:
        body = bodies[names] = _build_sotw(snapshot, names)
    return body


def _weak_bodies() -> weakref.WeakKeyDictionary[frozenset[str], SotwBody]:
    return weakref.WeakKeyDictionary()


def _build_sotw(snapshot: TypeSnapshot, names: frozenset[str] | None) -> SotwBody:
    resources = snapshot.resources
    if names is None:
        chosen = [resources[n] for n in sorted(resources)]
        version = snapshot.version
    else:
        chosen = [resources[n] for n in sorted(names) if n in resources]
        version = set_version((r.name, r.version) for r in chosen)
    body = b"".join(
        [
            len_field(_VERSION_INFO, version.encode()),
            *(len_field(_RESOURCES, r.any) for r in chosen),
            len_field(_TYPE_URL, snapshot.type_url.encode()),
        ]
    )
    return SotwBody(version, len(chosen), body)


def sotw_response(body: SotwBody, nonce: str) -> bytes:
    """A serialized ``DiscoveryResponse``: the shared body plus this stream's nonce."""
    return body.body + len_field(_NONCE, nonce.encode())


def delta_response(
    snapshot: TypeSnapshot,
    resource_names: Iterable[str],
    removed: Iterable[str],
    nonce: str,
) -> bytes:
    """A serialized ``DeltaDiscoveryResponse`` with the named resources of ``snapshot``."""
    resources = snapshot.resources
    return b"".join(
        [
            len_field(_D_SYSTEM_VERSION_INFO, snapshot.version.encode()),
            *(len_field(_D_RESOURCES, resources[n].resource) for n in resource_names),
            *(len_field(_D_REMOVED_RESOURCES, n.encode()) for n in removed),
            len_field(_D_TYPE_URL, snapshot.type_url.encode()),
            len_field(_D_NONCE, nonce.encode()),
        ]
    )
