"""The backfill: copy every item from the source DAL to the target (WIP: signatures)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from .state import MigrationState

LiveP99 = Callable[[], Awaitable[float | None]]


@dataclass(frozen=True)
class BackfillOptions:
    namespaces: Sequence[str] | None = None
    page_size_bytes: int = 1 << 20
    checkpoint_s: float = 2.0
    lease_s: float = 30.0
    runner_id: str = ""
    take_over: bool = False


@dataclass
class BackfillResult:
    items: int
    bytes: int
    skipped: int
    seconds: float
    done: bool


async def run_backfill(
    source: str,
    target: str,
    state: MigrationState,
    options: BackfillOptions = BackfillOptions(),
    *,
    live_p99: LiveP99 | None = None,
    progress: bool | None = None,
    stop: asyncio.Event | None = None,
) -> BackfillResult:
    raise NotImplementedError
