"""Which gateway hosts are registered under which discovery names.

A healthy host's report lists the names it registers under; this index turns them
into EDS for client-side proxies (node cluster ``DISCOVERY_SHARD``) and into the
admin API's ``/v1/discovery/ADDRESS``. It is kept incrementally (a reverse index by
node), so a registration change rebuilds only the names it touches.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from envoy.config.endpoint.v3.endpoint_pb2 import ClusterLoadAssignment

from dgw_api.v1 import gateway_pb2
from xds_server.cache import SnapshotCache
from xds_server.config import ShardFile
from xds_server.resources import ENDPOINT
from xds_server.translate import (
    DISCOVERY_SHARD,
    RegisteredHost,
    discovery_assignments,
    discovery_name,
)

_Key = tuple[str, str]  # (shard, node_id)


class Discovery:
    def __init__(self, cache: SnapshotCache):
        self.cache = cache
        self._hosts: dict[str, dict[_Key, RegisteredHost]] = {}
        self._names_of: dict[_Key, set[str]] = {}
        self._assignments: dict[str, ClusterLoadAssignment] = {}

    def hosts(self, address: str) -> list[dict[str, object]]:
        return [
            {"shard": h.shard, "node_id": h.node_id, "address": h.address, "ports": dict(h.ports)}
            for _, h in sorted(self._hosts.get(address, {}).items())
        ]

    def declare(self, config: ShardFile) -> None:
        """Publish the config's names at once, empty until a host registers, so that a
        client proxy starting first is answered instead of left waiting."""
        missing = [
            name
            for reg in config.registrations
            for address in reg.addresses()
            for listener in config.proxy_config.public_listeners
            if (name := discovery_name(address, listener)) not in self._assignments
        ]
        empty = {name: ClusterLoadAssignment(cluster_name=name) for name in missing}
        self._assignments.update(empty)
        if empty:
            self.cache.update_resources(DISCOVERY_SHARD, ENDPOINT, empty)

    def update(
        self, shard: str, ports: Mapping[str, int], reports: Iterable[gateway_pb2.NodeReport],
        declared: frozenset[str],
    ) -> None:  # fmt: skip
        """Re-index the registrations of these reports of ``shard`` (whose public
        listeners are on ``ports``; it may register under ``declared`` only) and
        republish the names that changed."""
        touched: set[str] = set()
        for report in reports:
            key = (shard, report.node_id)
            wanted = set(report.registrations) & declared
            for address in self._names_of.get(key, set()) - wanted:
                del self._hosts[address][key]
                touched.add(address)
            host = RegisteredHost(shard, report.node_id, report.host_address, dict(ports))
            for address in wanted:
                if self._hosts.setdefault(address, {}).get(key) != host:
                    self._hosts[address][key] = host
                    touched.add(address)
            if wanted:
                self._names_of[key] = wanted
            else:
                self._names_of.pop(key, None)
        self._publish(touched)

    def drop_shard(self, shard: str) -> None:
        keys = [k for k in self._names_of if k[0] == shard]
        touched = set()
        for key in keys:
            for address in self._names_of.pop(key):
                del self._hosts[address][key]
                touched.add(address)
        self._publish(touched)

    def _publish(self, addresses: set[str]) -> None:
        """Rebuild and re-encode the EDS names of these addresses only."""
        changed: dict[str, ClusterLoadAssignment] = {}
        for address in addresses:
            hosts = self._hosts.get(address) or {}
            current = discovery_assignments({address: hosts.values()})
            # A name that lost its last host stays, empty: a client proxy must learn
            # that nobody serves it (EDS never treats absence as removal).
            prefix = f"{address}/"
            for name in [n for n in self._assignments if n.startswith(prefix)]:
                changed[name] = current.get(name) or ClusterLoadAssignment(cluster_name=name)
            changed.update(current)
            if not hosts:
                self._hosts.pop(address, None)
        if changed:
            self._assignments.update(changed)
            self.cache.update_resources(DISCOVERY_SHARD, ENDPOINT, changed)
