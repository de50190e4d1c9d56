"""Revoked nodes: a gateway host whose key may be in the wrong hands.

``dgw node revoke N --shard S`` (``PUT /v1/revocations/S/N``) records the node in the
config store (a record of kind ``revocation`` named ``S:N``, so every server of an HA
set sees it, and a restart keeps it) and at once:

- ends every stream the node holds (its Envoy's ADS, its sidecar's config watch);
- refuses its next renewal, its reports and any new stream, whatever certificate it
  shows (a certificate stays valid until it expires: the server stops trusting the
  node, not the certificate);
- refuses a join token for that node id, so the host cannot simply enrol again.

``dgw node reinstate N --shard S`` deletes the record; the host then needs a new join
token (its certificate may have expired meanwhile). Other servers of an HA set read the
records every ``REFRESH_S`` (and at start), so a revocation holds on all of them within
that time.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass

from xds_server.store import ConfigStore, Record, RecordConflict

log = logging.getLogger("xds_server.security.revocations")

KIND = "revocation"
REFRESH_S = 10.0


@dataclass(frozen=True)
class Revocation:
    shard: str
    node: str
    at: str  # ISO 8601, UTC
    by: str  # the actor, as the audit log names it
    reason: str


def record_name(shard: str, node: str) -> str:
    """Shard names hold no ':' (``common.names``), so the first ':' splits them."""
    return f"{shard}:{node}"


class Revocations:
    """The revoked nodes, read from the store into memory (a check on every call is a
    dictionary lookup) and written through. ``on_revoke(revocation)`` ends the
    node's streams; it runs for revocations read from the store too (another server's)."""

    def __init__(
        self,
        store: ConfigStore,
        on_revoke: Callable[[Revocation], None],
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        self._store = store
        self._on_revoke = on_revoke
        self._clock = clock
        self._revoked: dict[tuple[str, str], tuple[Revocation, int]] = {}  # with the record's version

    def revoked(self, shard: str, node: str) -> Revocation | None:
        held = self._revoked.get((shard, node))
        return held[0] if held else None

    def list(self) -> list[Revocation]:
        return [r for r, _ in sorted(self._revoked.values(), key=lambda rv: (rv[0].shard, rv[0].node))]

    async def refresh(self) -> None:
        """Read every revocation from the store (at start, then every ``REFRESH_S``)."""
        records = await self._store.list_records(KIND)
        current: dict[tuple[str, str], tuple[Revocation, int]] = {}
        for record in records:
            revocation = _parse(record)
            if revocation is not None:
                current[(revocation.shard, revocation.node)] = (revocation, record.version)
        new = [r for key, (r, _) in current.items() if key not in self._revoked]
        self._revoked = current
        for revocation in new:
            self._on_revoke(revocation)

    async def revoke(self, shard: str, node: str, by: str, reason: str) -> tuple[Revocation, bool]:
        """Revoke (shard, node); (the revocation, whether it is new). Revoking a revoked
        node again keeps the first revocation."""
        revocation = Revocation(shard, node, self._clock().isoformat(), by, reason)
        try:
            record = await self._store.put_record(KIND, record_name(shard, node),
                                                  json.dumps(asdict(revocation)), base_version=None)  # fmt: skip
        except RecordConflict as e:
            existing = _parse(e.current) if e.current is not None else None
            if existing is None:
                raise
            self._revoked[(shard, node)] = (existing, e.current.version if e.current else 0)
            return existing, False
        self._revoked[(shard, node)] = (revocation, record.version)
        log.warning("event=node_revoked shard=%s node=%s by=%s", shard, node, by)
        self._on_revoke(revocation)
        return revocation, True

    async def reinstate(self, shard: str, node: str) -> bool:
        """Forget the revocation of (shard, node); False if there was none."""
        record = await self._store.get_record(KIND, record_name(shard, node))
        if record is None:
            self._revoked.pop((shard, node), None)
            return False
        await self._store.delete_record(KIND, record.name, base_version=record.version)
        self._revoked.pop((shard, node), None)
        log.warning("event=node_reinstated shard=%s node=%s", shard, node)
        return True


def _parse(record: Record) -> Revocation | None:
    try:
        data = json.loads(record.data)
        return Revocation(**{k: str(data[k]) for k in ("shard", "node", "at", "by", "reason")})
    except (ValueError, KeyError, TypeError):
        log.error("event=revocation_unreadable name=%s", record.name)
        return None
