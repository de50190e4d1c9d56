"""``EnvoyProcess`` for synchronous callers (benchmark figures, synchronous tests).

Each call runs the launcher's own coroutine on one background event loop and waits for
its result, so there is one implementation of starting, polling and stopping Envoy.
Calls may come from any thread (a benchmark waits on several Envoys at once).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

from .admin import EnvoyAdmin, Stats
from .process import DEFAULT_STOP_TIMEOUT_S, EnvoyProcess
from .stats import Sample

T = TypeVar("T")

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None


def _background_loop() -> asyncio.AbstractEventLoop:
    """The loop every BlockingEnvoy runs on, started on first use. Its thread is a
    daemon: the Envoys themselves are stopped by their callers, by PID."""
    global _loop
    with _lock:
        if _loop is None:
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, name="envoy-proxy", daemon=True).start()
            _loop = loop
        return _loop


def _run(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run_coroutine_threadsafe(coroutine, _background_loop()).result()


class BlockingEnvoy:
    """An Envoy started (not yet ready) when made; the arguments are ``EnvoyProcess``'s."""

    def __init__(self, bootstrap: dict[str, Any], workdir: Path, **options: Any) -> None:
        self.process = EnvoyProcess(bootstrap, workdir, **options)
        _run(self.process.start())

    @property
    def node_id(self) -> str:
        return self.process.node_id

    @property
    def shard(self) -> str:
        return self.process.shard

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def admin_address(self) -> str | None:
        return self.process.admin_address

    def alive(self) -> bool:
        return self.process.running

    def wait_ready(self, timeout: float = 30.0) -> None:
        _run(self.process.wait_ready(timeout))

    def admin_text(self, path: str, params: dict[str, str] | None = None) -> str:
        return _run(self.process.admin.get_text(path, params))

    def stats(self, pattern: str | None = None) -> Stats:
        return _run(self.process.admin.stats(pattern))

    def sample(self) -> Sample:
        """The stats a gateway host reports (``envoy_proxy.stats``)."""
        return _run(self.process.admin.sample())

    def stat(self, name: str) -> int:
        """One counter or gauge by its exact name (0 while Envoy has not made it)."""
        return self.stats(f"^{name.replace('.', '[.]')}$").number(name)

    def cluster_names(self) -> frozenset[str]:
        return _run(self.process.admin.cluster_names())

    def stop(self, timeout: float = DEFAULT_STOP_TIMEOUT_S) -> int | None:
        return _run(self.process.stop(timeout))


def admin_text(socket: Path, path: str, params: dict[str, str] | None = None) -> str:
    """GET ``path`` from the admin of an Envoy this process did not start (a child
    process's: a client proxy, a sidecar), on its socket; AdminUnavailable if it does
    not answer."""

    async def get() -> str:
        async with EnvoyAdmin(socket) as admin:
            return await admin.get_text(path, params)

    return _run(get())
