"""The runner's state in the server's config store, through the admin API: ``load`` is
``GET /v1/migrations/{shard}``, ``save`` a ``PUT`` of each section the runner owns
(``backfill``, ``verify``) with If-Match on the version last seen. A 409 or 412 (the
migration moved on: a rollback, a throttle, another runner) is ``StateLost``."""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import quote

from dgw.client import Client, ClientError

from .state import RUNNER_SECTIONS, StateLost


class ApiState:
    def __init__(self, client: Client, shard: str) -> None:
        self.client = client
        self.path = f"/v1/migrations/{quote(shard, safe='')}"
        self.version: int | None = None

    async def load(self) -> dict[str, Any]:
        data: dict[str, Any] = await asyncio.to_thread(self.client.get, self.path)
        self.version = int(data["version"])
        return data

    async def save(self, data: dict[str, Any]) -> None:
        for section in RUNNER_SECTIONS:
            if section in data:
                await asyncio.to_thread(self._put, section, data[section])

    def _put(self, section: str, body: Any) -> None:
        try:
            answer = self.client.request("PUT", f"{self.path}/{section}", body,
                                         headers={"If-Match": f'"{self.version}"'}).body  # fmt: skip
        except ClientError as e:
            if e.status in (409, 412):
                raise StateLost(str(e)) from None
            raise
        self.version = int(answer["version"])

    async def live_p99(self, shard: str) -> float | None:
        """The shard's clients' p99 now (the busiest listener's, last 10 s), for the
        backfill's back-off; None when no traffic is measured."""
        try:
            stats = await asyncio.to_thread(self.client.get, f"/v1/stats/{quote(shard, safe='')}", window="10s")
        except ClientError:
            return None
        listeners = [v for v in stats.get("listeners", {}).values() if v.get("requests")]
        busiest = max(listeners, key=lambda v: v["requests"], default=None)
        p99 = busiest.get("p99_ms") if busiest else None
        return float(p99) if isinstance(p99, int | float) else None
