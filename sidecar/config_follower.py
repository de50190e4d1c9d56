"""Following the shard's runtime config: the xds_server's WatchConfig stream, and a
copy of the last config it sent kept on disk so a restarted agent has its goal
before (or without) the server.

The cache file may hold resolved secrets (a password in a URL), so it is written
owner-only (0600) and replaced atomically.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterable, Callable
from pathlib import Path

from common.files import write_private
from xds_server.config import ConfigError, RuntimeConfig, load_served_config
from xds_server.deploy.artifacts import Pin, pins_from_json, pins_json

from .control import Connected, Disconnected, WatchEvent
from .log import EventLog

CACHE_FILE = "last-config.json"
_CACHE_MODE = 0o600


class ConfigFollower:
    """Holds the config to reach and whether the server's stream is up; calls
    ``on_change(reason)`` when either changes, and ``on_connect`` too each time the
    stream is (re)established (the server may have lost what it was told)."""

    def __init__(
        self,
        shard: str,
        state_dir: Path,
        log: EventLog,
        on_change: Callable[[str], None],
        on_connect: Callable[[], None] = lambda: None,
    ):
        self._shard = shard
        self._cache = state_dir / CACHE_FILE
        self._log = log
        self._on_change = on_change
        self._on_connect = on_connect
        self.config: RuntimeConfig | None = None
        self.version: str = ""
        # What the config's version set pins each artifact to (``sidecar.builds``).
        self.pins: dict[str, Pin] = {}
        self.connected = False

    def load_cache(self) -> None:
        """Start from the last config the server sent, if this host kept one."""
        try:
            data = json.loads(self._cache.read_text())
            version, text = str(data["version"]), str(data["yaml"])
            pins = pins_from_json(data.get("pins", []))
        except FileNotFoundError:
            return
        except (OSError, ValueError, KeyError, TypeError) as e:
            self._log.warning("config_cache_unreadable", file=str(self._cache), error=str(e))
            return
        _tighten(self._cache)
        self._apply(version, text, pins, source="cache")

    async def follow(self, events: AsyncIterable[WatchEvent]) -> None:
        """Apply every config and connection change of ``events`` (runs until cancelled)."""
        async for event in events:
            if isinstance(event, Connected):
                self.connected = True
                self._on_connect()
                self._on_change("control connected")
            elif isinstance(event, Disconnected):
                self.connected = False
                self._on_change("control disconnected")
            else:
                try:
                    pins = pins_from_json({"artifact": p.artifact, "kind": p.kind, "digest": p.digest,
                                           "source": p.source, "ref": p.ref} for p in event.pins)  # fmt: skip
                except ValueError as e:
                    self._log.error("config_rejected", version=event.version, source="xds_server",
                                    error=f"pins: {e}")  # fmt: skip
                    continue
                self._apply(event.version, event.yaml, pins, source="xds_server")

    def _apply(self, version: str, text: str, pins: dict[str, Pin], source: str) -> None:
        if self.config is not None and version == self.version:
            return
        try:
            cfg = load_served_config(text, f"{source}:{self._shard}").runtime()
        except ConfigError as e:
            self._log.error("config_rejected", version=version, source=source, error=str(e))
            return
        self.config, self.version, self.pins = cfg, version, pins
        self._log.info(
            "config_applied", version=version, source=source,
            dals=",".join(sorted(cfg.container_dals)) or "-",
            pins=",".join(f"{k}={p.digest[:19]}" for k, p in sorted(pins.items()) if p.kind != "config") or "-",
        )
        if source == "xds_server":
            self._save(version, text, pins)
        self._on_change("config changed")

    def _save(self, version: str, text: str, pins: dict[str, Pin]) -> None:
        # 0600 from the first byte, never through a symbolic link: it holds resolved secrets.
        data = {"version": version, "yaml": text, **({"pins": pins_json(pins)} if pins else {})}
        write_private(self._cache, json.dumps(data).encode())


def _tighten(path: Path) -> None:
    """A cache written by an older agent may be world-readable: make it owner-only."""
    try:
        if path.stat().st_mode & 0o077:
            path.chmod(_CACHE_MODE)
    except PermissionError:
        pass  # not ours to change; reading it was allowed
