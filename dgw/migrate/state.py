"""Where a migration runner keeps its state: the Protocol it uses, and two
implementations for the benchmark and the tests (in memory; a JSON file).

The runner (``backfill.py``, ``verify.py``) keeps nothing of its own: every checkpoint
goes through ``MigrationState.save`` (the admin API's If-Match in production,
``dgw/migrate/api_state.py``), so a runner killed at any moment is resumed by another
from the last checkpoint, on any host.

The data is the migration record's, as ``GET /v1/migrations/{shard}`` shows it. What
the runner reads and writes:

- ``"version"``: the record's version (set by the state, never by the runner);
- ``"backfill"``: the runner's checkpoint, written by the runner only::

      {"namespaces": {NS: {"cursor": str (base64, "" = not started), "done": bool,
                           "items": int, "bytes": int, "skipped": int}},
       "totals": {"items": int, "bytes": int, "skipped": int,
                  "source_items": int | None},   # the source's count, for the ETA
       "lease": {"runner": str, "expires": float (Unix s)} | None,
       "rate": {"items_per_s": float, "bytes_per_s": float, "backoff": float},
       "started": float, "updated": float, "done": bool}

- ``"throttle"``: ``{"items_per_s": float | None, "bytes_per_s": float | None}``, set by
  the operator (``dgw migrate SHARD throttle``), read by the runner at every checkpoint,
  never written by it (None or absent: no limit);
- ``"verify"``: the verify report (``verify.VerifyReport.to_dict``), written by verify.

``save(data)`` writes the sections the runner owns (``backfill``, ``verify``) that
``data`` holds, on the version of the last ``load``/``save``; if the record moved on
meanwhile (anyone wrote it: a throttle, another runner, a rollback) it raises
``StateLost`` and changes nothing. The runner then loads again and decides: its lease
still its own, it saves again; otherwise it stops.
"""

from __future__ import annotations

import asyncio
import copy
import fcntl
import json
import os
from pathlib import Path
from typing import Any, Protocol

RUNNER_SECTIONS = ("backfill", "verify")


class StateLost(Exception):
    """The migration record moved on since the runner last read it."""


class MigrationState(Protocol):
    async def load(self) -> dict[str, Any]:
        """The migration record's data, with its ``version``."""
        ...

    async def save(self, data: dict[str, Any]) -> None:
        """Write the runner's sections of ``data`` (``backfill``, ``verify``) if the record
        is still at the version last loaded or saved; StateLost otherwise."""
        ...


class MemoryState:
    """A migration record in memory (tests, benchmarks). ``update`` changes it as the
    operator would (a throttle), moving its version on."""

    def __init__(self, data: dict[str, Any] | None = None) -> None:
        self._data: dict[str, Any] = copy.deepcopy(data or {})
        self._data["version"] = 1
        self._seen = 0

    async def load(self) -> dict[str, Any]:
        self._seen = self._data["version"]
        return copy.deepcopy(self._data)

    async def save(self, data: dict[str, Any]) -> None:
        if self._seen != self._data["version"]:
            raise StateLost(f"the migration record is at version {self._data['version']}, "
                            f"not {self._seen} as last read")  # fmt: skip
        for section in RUNNER_SECTIONS:
            if section in data:
                self._data[section] = copy.deepcopy(data[section])
        self._data["version"] += 1
        self._seen = self._data["version"]

    def update(self, **sections: Any) -> None:
        self._data.update(copy.deepcopy(sections))
        self._data["version"] += 1

    @property
    def data(self) -> dict[str, Any]:
        return copy.deepcopy(self._data)


class FileState:
    """A migration record in a JSON file, written whole by rename under an exclusive
    ``flock`` of ``PATH.lock``: several processes may share it (a runner killed with -9
    and the one that resumes it; ``python -m dgw.migrate.backfill --state FILE``)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._seen: int | None = None

    async def load(self) -> dict[str, Any]:
        return await asyncio.to_thread(self._load)

    async def save(self, data: dict[str, Any]) -> None:
        await asyncio.to_thread(self._save, data)

    def update(self, **sections: Any) -> None:
        """Change the record as an operator would (a throttle): a new version."""
        with self._locked():
            current = self._read()
            current.update(sections)
            current["version"] = current.get("version", 0) + 1
            self._write(current)

    def _load(self) -> dict[str, Any]:
        with self._locked():
            data = self._read()
        self._seen = data["version"]
        return data

    def _save(self, data: dict[str, Any]) -> None:
        with self._locked():
            current = self._read()
            if current["version"] != self._seen:
                raise StateLost(f"{self.path}: the migration record is at version {current['version']}, "
                                f"not {self._seen} as last read")  # fmt: skip
            for section in RUNNER_SECTIONS:
                if section in data:
                    current[section] = data[section]
            current["version"] += 1
            self._write(current)
            self._seen = current["version"]

    def _read(self) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads(self.path.read_text())
        except FileNotFoundError:
            data = {}
        data.setdefault("version", 0)
        return data

    def _write(self, data: dict[str, Any]) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w") as f:
            json.dump(data, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    def _locked(self) -> _Flock:
        return _Flock(self.path.with_name(self.path.name + ".lock"))


class _Flock:
    def __init__(self, path: Path) -> None:
        self._path = path
        self._fd = -1

    def __enter__(self) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self._fd, fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
