"""The pins each stored shard version runs, kept beside it in the config store.

A shard version is its text *and* what its version set resolved to when it was stored
(``artifacts.resolve``): a branch that moves later changes nothing that runs. The
change path (``xds_server.changes``) resolves a new version's version set, refuses it
at the artifact's key path when that fails, and records the pins (record kind
``pins``, name ``SHARD@VERSION``) *before* the version itself, so a version is never
visible without them; a rollback to version N runs N's pins again, not the branch's
head. Only DAL pins are recorded: a config pin follows from the text.

A version stored without a record (before this existed, or a write that crashed
between the two) is resolved again when the server loads it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from xds_server.config import Problem, ShardFile
from xds_server.store import ConfigStore, RecordConflict, StoreError

from .artifacts import (
    Artifact,
    Pin,
    Pins,
    config_version,
    pins_from_json,
    pins_json,
    resolve,
)
from .index import ArtifactIndex

RECORD_KIND = "pins"
_ATTEMPTS = 5


def record_name(shard: str, number: int) -> str:
    return f"{shard}@{number}"


def recorded(pins: Pins) -> dict[str, Pin]:
    """The pins worth a record: those a text alone cannot say (DAL builds)."""
    return {k: p for k, p in pins.items() if p.kind != "config"}


def resolve_config(
    config: ShardFile, text: str, index: Mapping[str, Artifact], file: str, held: Pins
) -> tuple[dict[str, Pin], list[Problem]]:
    """The shard's version set as pins, and the problems at the key paths of those
    that do not resolve (pure). Artifacts in ``held`` keep those pins."""
    desires = config.deploy_desires
    if desires is None or not desires.version_set.artifacts:
        return {}, []
    return resolve(desires.version_set, index, config_version(text), file, held)


class VersionSets:
    """The change path's view of artifacts: the index to resolve with, and the pins
    recorded for each stored version."""

    def __init__(self, store: ConfigStore):
        self.store = store
        self.index = ArtifactIndex(store)

    async def snapshot(self) -> dict[str, Artifact]:
        return await self.index.snapshot()

    async def stored(self, shard: str, number: int) -> dict[str, Pin] | None:
        record = await self.store.get_record(RECORD_KIND, record_name(shard, number))
        if record is None:
            return None
        return pins_from_json(json.loads(record.data)["pins"])

    async def record(self, shard: str, number: int, pins: Pins) -> None:
        """Keep ``pins`` as version ``number``'s (over a stale record of a write that
        never happened: the number is about to be written now)."""
        worth = recorded(pins)
        if not worth:
            return
        name = record_name(shard, number)
        data = json.dumps({"pins": pins_json(worth)}, sort_keys=True, separators=(",", ":"))
        base: int | None = None  # a new version's record is new: no read first
        for _ in range(_ATTEMPTS):
            try:
                await self.store.put_record(RECORD_KIND, name, data, base_version=base)
                return
            except RecordConflict as e:
                base = None if e.current is None else e.current.version
        raise StoreError(f"the pins of {shard} version {number} kept changing under {_ATTEMPTS} "
                         "attempts to record them; try again")
