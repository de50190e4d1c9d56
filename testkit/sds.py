"""A ``LocalSds`` (the sidecar's SDS server) on its own event loop in a thread, for
synchronous tests and benchmarks that hand a gateway Envoy its certificates."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

from sidecar.identity import Credentials
from sidecar.sds import LocalSds

T = TypeVar("T")
_CALL_TIMEOUT_S = 10.0


class ThreadedSds:
    def __init__(self, socket_path: Path, shard: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="sds", daemon=True)
        self.thread.start()
        self.sds = LocalSds(socket_path, shard)
        try:
            self._call(self.sds.start())
        except BaseException:
            self._end_loop()
            raise

    @property
    def socket_path(self) -> Path:
        return self.sds.socket_path

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(_CALL_TIMEOUT_S)

    def serve(self, providers: list[str], creds: Credentials) -> bool:
        """Serve ``creds`` under the providers' secret names; True if Envoy sees a change."""

        async def serve() -> bool:  # on the server's loop: its streams are woken there
            return self.sds.serve(providers, creds)

        return self._call(serve())

    def stop(self) -> None:
        try:
            self._call(self.sds.stop())
        finally:
            self._end_loop()

    def _end_loop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()
