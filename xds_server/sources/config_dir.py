"""A directory of shard files, ``DIR/<shard>.yaml``, watched for changes.

Each file is one shard's runtime config (optionally with ``deploy_desires``). A file
that fails to load or translate is logged and recorded as a rejection; the shard's
running config stays in force.

With the config store (``changes``, as the server runs it) the directory is the GitOps
way in: a changed file becomes a new stored version authored ``file:<path>``
(``xds_server.changes``), and a file that disappears does not take its shard down (it
keeps serving, ``source_missing``). Without it (tests, benchmarks) files go straight
to the registry and deleting a file removes its shard.

What is read, and what is not:

- A shard file's name is ``<shard>.yaml`` or ``<shard>.yml`` where the shard is an
  ASCII letter or digit followed by up to 62 letters, digits, ``_``, ``.`` or ``-``
  (the shard becomes Envoy's ``node.cluster`` and a word in URLs and logs, so no
  spaces, no unicode, no leading ``-`` or ``.``). Anything else in the directory
  (editor swap files, ``*.tmp`` of an atomic write, sub-directories) is logged once as
  ignored, with the reason.
- Only regular files inside the directory are read. A symlink is followed only when
  it ends at a regular file inside the directory (Kubernetes mounts config maps as
  ``name -> ..data/name``); any other is refused without being opened, so its
  target's content can never reach a log line or the admin API.
- An empty or truncated file is a rejection (the loader refuses it), never an empty
  shard. Sizes and shapes are bounded by ``Limits`` before parsing.
- Files are read and parsed in a worker thread: a slow file never stalls the loop
  that serves Envoys and ``/healthz``. Installing the result runs on the loop.
- A file is loaded again only when its stat (inode, size, mtime) changed, so the
  rescan that follows the watcher's start reads nothing twice.
- The watcher never dies: an unexpected error while loading a file becomes that
  file's rejection; a failure of the watch itself is recorded in ``failure`` (making
  ``/healthz`` fail) and the watch restarts with a backoff, with a full rescan.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

import watchfiles

from common.backoff import backoff_delay
from common.names import SHARD_NAME
from xds_server.changes import Changes
from xds_server.config import (
    ConfigError,
    EnvPolicy,
    LoadedShard,
    Problem,
    load_shard_checked,
    quote,
    read_shard_text,
)
from xds_server.settings import Limits
from xds_server.shards import ShardRegistry

log = logging.getLogger("xds_server.sources.config_dir")
# watchfiles logs every batch at INFO; our own config_applied lines say what matters.
logging.getLogger("watchfiles").setLevel(logging.WARNING)

_SHARD_FILE = re.compile(rf"(?P<shard>{SHARD_NAME})\.ya?ml")
# Names already logged as ignored; bounded so that a flood of files cannot grow it.
_IGNORED_REMEMBERED = 10_000

_Fingerprint = tuple[int, int, int]  # (inode, size, mtime_ns)


def shard_of(path: Path) -> str | None:
    m = _SHARD_FILE.fullmatch(path.name)
    return m.group("shard") if m else None


@dataclass(frozen=True)
class _Loaded:
    """Read and checked (without the store)."""

    loaded: LoadedShard
    fingerprint: _Fingerprint


@dataclass(frozen=True)
class _Read:
    """Read only: the store's changes load and check the text themselves."""

    text: str
    fingerprint: _Fingerprint


@dataclass(frozen=True)
class _Refused:
    error: ConfigError
    fingerprint: _Fingerprint | None


@dataclass(frozen=True)
class _Gone:
    pass


@dataclass(frozen=True)
class _Unchanged:
    pass


_Outcome = _Loaded | _Read | _Refused | _Gone | _Unchanged


class ConfigDir:
    def __init__(
        self,
        directory: str | Path,
        registry: ShardRegistry,
        policy: EnvPolicy | None = None,
        limits: Limits | None = None,
        changes: Changes | None = None,
    ):
        # Absolute: watchfiles reports absolute paths, which must match ours.
        self.directory = Path(directory).absolute()
        self.registry = registry
        self.policy = policy or EnvPolicy()
        self.limits = limits or registry.limits
        self.changes = changes
        self.failure: str | None = None  # why the watch is not working, for /healthz
        self._seen: dict[str, _Fingerprint | None] = {}  # file name → stat when loaded
        self._ignored: set[str] = set()

    # --- loading -------------------------------------------------------------------

    def load_all(self) -> None:
        """Load every shard file, and drop shards whose file is gone (on the caller's
        thread, without the store: for tests and benchmarks)."""
        for path in self._scan():
            self.load(path)

    async def rescan(self) -> None:
        """``load_all`` with reading and parsing off the loop (the store's way)."""
        for path in self._scan():
            await self.load_off_loop(path)

    def load(self, path: Path) -> None:
        assert self.changes is None, "with the store, files are loaded off the loop"
        self._settle_registry(path, self._read(path))

    async def load_off_loop(self, path: Path) -> None:
        outcome = await asyncio.to_thread(self._read, path)
        if self.changes is None:
            self._settle_registry(path, outcome)
        else:
            await self._settle_store(self.changes, path, outcome)

    def _scan(self) -> list[Path]:
        """The shard files to (re)load, each shard whose file is gone removed."""
        if not self.directory.is_dir():
            raise FileNotFoundError(f"config dir {self.directory} does not exist")
        paths = []
        for path in sorted(self.directory.iterdir()):
            if shard_of(path):
                paths.append(path)
            else:
                self._ignore(path, "the name is not <shard>.yaml (shard: " + SHARD_NAME + ")")
        present = {shard_of(p) for p in paths}
        if self.changes is None:
            for shard in sorted(set(self.registry.shards) - present):
                self.registry.remove(shard)
        else:
            for shard in sorted(self.changes.file_owned() - present):
                self.changes.file_gone(shard)
        return paths

    def _read(self, path: Path) -> _Outcome:
        """Everything that touches the file and parses it (safe to run in a thread:
        it reads the registry's nothing)."""
        try:
            return self._read_checked(path)
        except Exception as e:  # one file's surprise must never end the watcher
            log.exception("event=config_load_failed path=%s", path)
            return _Refused(ConfigError([Problem(
                str(path), "", f"could not be loaded ({type(e).__name__}); see the server log"
            )]), None)

    def _read_checked(self, path: Path) -> _Outcome:
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            return _Gone()
        if stat.S_ISLNK(info.st_mode):
            refused = self._unsafe_link(path)
            if refused is not None:
                return _Refused(ConfigError([Problem(str(path), "", refused)]), None)
            info = os.stat(path)
        elif not stat.S_ISREG(info.st_mode):
            return _Refused(ConfigError([Problem(str(path), "", "not a regular file; refused")]), None)
        fingerprint = (info.st_ino, info.st_size, info.st_mtime_ns)
        if self._seen.get(path.name) == fingerprint:
            return _Unchanged()
        try:
            text = read_shard_text(path, self.limits)
            if self.changes is not None:
                return _Read(text, fingerprint)
            loaded = load_shard_checked(text, str(path), None, self.policy, self.limits)
            return _Loaded(loaded, fingerprint)
        except ConfigError as e:
            return _Refused(e, fingerprint)

    def _unsafe_link(self, path: Path) -> str | None:
        """Why a symlink is refused (its target is never opened), or None."""
        try:
            target = path.resolve(strict=True)
        except (OSError, RuntimeError):
            return "a symlink whose target does not exist; refused"
        if not target.is_relative_to(self.directory.resolve()):
            return "a symlink to a file outside the config dir; refused (not read)"
        if not target.is_file():
            return "a symlink to something that is not a regular file; refused"
        return None

    def _record(self, path: Path, outcome: _Outcome) -> tuple[str, _Loaded | _Read | _Gone] | None:
        """What both ways share: the name check, the file's fingerprint, a refusal.
        Returns what is left to apply (the shard, and its file or its going), or None."""
        shard = shard_of(path)
        if shard is None:
            self._ignore(path, "the name is not <shard>.yaml (shard: " + SHARD_NAME + ")")
            return None
        match outcome:
            case _Unchanged():
                return None
            case _Refused(error, fingerprint):
                self._seen[path.name] = fingerprint
                self.registry.reject(shard, str(path), error)
                return None
            case _Gone():
                self._seen.pop(path.name, None)
            case _Loaded(fingerprint=fingerprint) | _Read(fingerprint=fingerprint):
                self._seen[path.name] = fingerprint
        return shard, outcome

    def _apply_failed(self, shard: str, path: Path, e: Exception) -> None:
        log.exception("event=config_apply_failed shard=%s path=%s", shard, path)
        self.registry.reject(shard, str(path), ConfigError([Problem(
            str(path), "", f"could not be applied ({type(e).__name__}); see the server log"
        )]))

    async def _settle_store(self, changes: Changes, path: Path, outcome: _Outcome) -> None:
        todo = self._record(path, outcome)
        if todo is None:
            return
        shard, what = todo
        match what:
            case _Gone():
                changes.file_gone(shard)
            case _Loaded():
                raise AssertionError("with the store, files are read, not loaded")
            case _Read(text):
                try:
                    await changes.from_file(shard, str(path), text)
                except Exception as e:
                    self._apply_failed(shard, path, e)

    def _settle_registry(self, path: Path, outcome: _Outcome) -> None:
        todo = self._record(path, outcome)
        if todo is None:
            return
        shard, what = todo
        match what:
            case _Gone():
                self.registry.remove(shard)
            case _Read():
                raise AssertionError("without the store, files are loaded")
            case _Loaded(loaded):
                try:
                    self.registry.apply(shard, loaded.config, str(path), loaded.secrets)
                except ConfigError:
                    pass  # already recorded and logged as a rejection by the registry
                except Exception as e:
                    self._apply_failed(shard, path, e)

    def _ignore(self, path: Path, reason: str) -> None:
        if path.name in self._ignored or len(self._ignored) >= _IGNORED_REMEMBERED:
            return
        self._ignored.add(path.name)
        log.warning("event=file_ignored dir=%s name=%s reason=%r", self.directory,
                    quote(path.name), reason)

    # --- watching ------------------------------------------------------------------

    async def watch(self, ready: asyncio.Event | None = None) -> None:
        """Reload changed files until cancelled; restart the watch if it fails."""
        attempts = 0
        while True:
            try:
                await self._watch_once(ready)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                attempts += 1
                self.failure = f"config dir watch failed: {type(e).__name__}: {str(e)[:200]}"
                log.exception("event=config_watch_failed dir=%s attempt=%d", self.directory, attempts)
                await asyncio.sleep(backoff_delay(attempts, 0.5, 10.0))

    async def _watch_once(self, ready: asyncio.Event | None) -> None:
        """The first (empty) batch arrives once the watcher is in place: a rescan
        then catches whatever was written before that moment, and only then is the
        server ready (or healthy again after a failure)."""
        watching = False
        async for changes in watchfiles.awatch(
            self.directory, debounce=50, step=20, yield_on_timeout=True, rust_timeout=200
        ):
            if not watching:
                watching = True
                await self.rescan()
                self.failure = None
                if ready is not None:
                    ready.set()
            for path in sorted({Path(p) for _, p in changes}):
                if path.parent == self.directory:
                    await self.load_off_loop(path)
        raise RuntimeError("the watch ended")  # e.g. the directory was removed

