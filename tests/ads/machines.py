"""Driving the pure ``SotwStream`` / ``DeltaStream`` state machines from tables: one
type's resources as a snapshot, requests in, decoded responses out."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from envoy.service.discovery.v3.discovery_pb2 import DeltaDiscoveryResponse, DiscoveryResponse
from google.protobuf.message import Message

from tests.ads.ads_samples import cla, cluster, listener, route, secret
from tests.ads.ads_script import names_of
from xds_server.ads.delta import DeltaStream
from xds_server.ads.events import Outgoing
from xds_server.ads.sotw import NameSets, SotwStream
from xds_server.cache import Snapshot, StreamStatus, build_snapshot
from xds_server.resources import CLUSTER, ENDPOINT, LISTENER, PUSH_ORDER, ROUTE, SECRET, Resources
from xds_server.settings import AdsLimits

# One resource of each type; ``v`` varies its content (so its version).
_BUILD: dict[str, Callable[[str, int], Message]] = {
    CLUSTER: lambda n, v: cluster(n, 1000 + v),
    ENDPOINT: lambda n, v: cla(n, 9000 + v),
    LISTENER: lambda n, v: listener(n, 10000 + v, "r"),
    ROUTE: lambda n, v: route(n, f"c{v}"),
    SECRET: lambda n, v: secret(n, f"v{v}"),
}

TYPES = PUSH_ORDER


def snap(type_url: str, contents: Mapping[str, int]) -> Snapshot:
    """A snapshot holding only ``type_url`` resources: name → content variant."""
    return build_snapshot(
        Resources({type_url: {n: _BUILD[type_url](n, v) for n, v in contents.items()}})
    )


@dataclass(frozen=True)
class Sent:
    """A decoded response: its type, resource names, removed names, version, nonce."""

    type_url: str
    names: list[str]
    removed: list[str]
    version: str
    nonce: str


def sotw_sent(out: list[Outgoing]) -> list[Sent]:
    sent = []
    for o in out:
        r = DiscoveryResponse.FromString(o.payload)
        sent.append(Sent(r.type_url, names_of(r), [], r.version_info, r.nonce))
    return sent


def delta_sent(out: list[Outgoing]) -> list[Sent]:
    sent = []
    for o in out:
        r = DeltaDiscoveryResponse.FromString(o.payload)
        sent.append(
            Sent(
                r.type_url,
                [x.name for x in r.resources],
                list(r.removed_resources),
                r.system_version_info,
                r.nonce,
            )
        )
    return sent


def new_sotw(limits: AdsLimits | None = None) -> tuple[SotwStream, StreamStatus]:
    status = StreamStatus("s1", "n1", "sotw")
    return SotwStream(status, NameSets(), limits or AdsLimits()), status


def new_delta(limits: AdsLimits | None = None) -> tuple[DeltaStream, StreamStatus]:
    status = StreamStatus("s1", "n1", "delta")
    return DeltaStream(status, limits or AdsLimits()), status
