"""The artifact index in the config store: one record per artifact (kind ``artifact``,
named ``dals:NAME``), read whole for resolving and written with compare-and-set."""

from __future__ import annotations

from xds_server.store import ConfigStore, RecordConflict

from .artifacts import (
    RECORD_KIND,
    Artifact,
    ArtifactError,
    Build,
    decode,
    encode,
    push,
    record_name,
)


class ArtifactIndex:
    """The index's records: a snapshot for resolving, and pushes with compare-and-set."""

    def __init__(self, store: ConfigStore, attempts: int = 5):
        self.store = store
        self._attempts = attempts

    async def snapshot(self) -> dict[str, Artifact]:
        return {a.key: a for a in (decode(r.data) for r in await self.store.list_records(RECORD_KIND))}

    async def get(self, key: str) -> Artifact | None:
        record = await self.store.get_record(RECORD_KIND, record_name(key))
        return None if record is None else decode(record.data)

    async def push(self, key: str, build: Build) -> Artifact:
        """Add ``build`` and move its refs; a concurrent push is re-read and redone."""
        name = record_name(key)
        for _ in range(self._attempts):
            record = await self.store.get_record(RECORD_KIND, name)
            updated = push(None if record is None else decode(record.data), key, build)
            try:
                await self.store.put_record(RECORD_KIND, name, encode(updated),
                                            base_version=None if record is None else record.version)  # fmt: skip
            except RecordConflict:
                continue
            return updated
        raise ArtifactError(f"{key} kept changing under {self._attempts} attempts to push; try again")
