"""A directory of shard files, ``DIR/<shard>.yaml``, watched for changes.

Each file is one shard's runtime config (optionally with ``deploy_desires``). A file
that fails to load or translate is logged and recorded as a rejection; the shard's
running config stays in force. Deleting a file removes its shard.
"""

from __future__ import annotations

import asyncio
import logging
import re
from pathlib import Path

import watchfiles

from xds_server.config import ConfigError, load_shard
from xds_server.shards import ShardRegistry

log = logging.getLogger("xds_server.sources.config_dir")
# watchfiles logs every batch at INFO; our own config_applied lines say what matters.
logging.getLogger("watchfiles").setLevel(logging.WARNING)

_SHARD_FILE = re.compile(r"^(?P<shard>[A-Za-z0-9][A-Za-z0-9_.-]*)\.ya?ml$")


def shard_of(path: Path) -> str | None:
    m = _SHARD_FILE.match(path.name)
    return m.group("shard") if m else None


class ConfigDir:
    def __init__(self, directory: str | Path, registry: ShardRegistry):
        self.directory = Path(directory)
        self.registry = registry

    def load_all(self) -> None:
        """Load every shard file, and drop shards whose file is gone."""
        if not self.directory.is_dir():
            raise FileNotFoundError(f"config dir {self.directory} does not exist")
        present = set()
        for path in sorted(self.directory.iterdir()):
            if shard_of(path):
                present.add(shard_of(path))
                self.load(path)
        for shard in sorted(set(self.registry.shards) - present):
            self.registry.remove(shard)

    def load(self, path: Path) -> None:
        shard = shard_of(path)
        if shard is None:
            return
        if not path.exists():
            self.registry.remove(shard)
            return
        try:
            config = load_shard(path)
        except ConfigError as e:
            self.registry.reject(shard, str(path), e)
            return
        try:
            self.registry.apply(shard, config, str(path))
        except ConfigError:
            pass  # already recorded and logged as a rejection by the registry

    async def watch(self, ready: asyncio.Event | None = None) -> None:
        """Reload changed files until cancelled; watchfiles batches bursts of writes.

        The first (empty) batch arrives once the watcher is in place: a full rescan
        then catches whatever was written between ``load_all()`` and that moment,
        and only then is the server ready.
        """
        watching = False
        async for changes in watchfiles.awatch(
            self.directory, debounce=50, step=20, yield_on_timeout=True, rust_timeout=200
        ):
            if not watching:
                watching = True
                self.load_all()
                if ready is not None:
                    ready.set()
            for path in sorted({Path(p) for _, p in changes}):
                if path.parent == self.directory:
                    self.load(path)
