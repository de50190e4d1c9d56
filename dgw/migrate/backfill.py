"""The backfill: copy every item of every namespace from the source DAL to the target,
over the DAL migration contract (Export from the source, Import into the target).

- **Nothing copied twice in effect, nothing newer overwritten.** Items travel with their
  original versions and the target applies them by last writer wins (the contract's
  Import), so a page imported again after a crash changes nothing and a live write that
  reached the target (the shadow) is never overwritten by an older copy.
- **Resumable.** Every ``checkpoint_s`` the cursor of the last page imported, the totals
  and a lease (runner id, expiry) go to the migration's state (``state.py``; the config
  store through the admin API in production). A runner killed at any moment is resumed
  by the next one from that cursor: at most ``checkpoint_s`` of pages are imported
  again, and skipped as already there. The lease keeps two runners from copying at
  once: another runner's unexpired lease is refused unless taken over
  (``take_over``: the operator knows the other one is dead).
- **Rate-limited.** Items/s and bytes/s from the operator's ``throttle`` in the state,
  read again at every checkpoint, so ``dgw migrate SHARD throttle`` acts while it runs.
- **Backs off by itself.** With ``live_p99`` (the shard's client p99 now, e.g. from
  ``GET /v1/stats/{shard}``), the first reading is the baseline; while p99 is over it by
  more than ``p99_tolerance`` the rate is halved at each check, and it grows back by a
  tenth of the full rate at each check once p99 is back (AIMD).
- **Progress** with rate and ETA: a bar on a terminal, a line every 5 s otherwise.

Pages are pipelined: the next Export runs while the last page is imported.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import logging
import math
import os
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .dal_client import DalClient, DalError
from .progress import ProgressView
from .state import FileState, MigrationState, StateLost

log = logging.getLogger("dgw.migrate")

LiveP99 = Callable[[], Awaitable[float | None]]
"""The shard's client p99 now, in ms (None: not measured); any unit would do, since a
reading is compared only to the first one."""
Clock = Callable[[], float]


class BackfillRefused(Exception):
    """The backfill cannot start (another runner holds the lease); the message says why
    and what to do."""


@dataclass(frozen=True)
class BackfillOptions:
    namespaces: Sequence[str] | None = None
    """None: every namespace the source serves."""
    page_size_bytes: int = 1 << 20
    checkpoint_s: float = 2.0
    lease_s: float = 30.0
    runner_id: str = ""
    """Who runs it, for the lease; "" = host:pid."""
    take_over: bool = False
    """Start even if another runner's lease has not expired."""
    p99_tolerance: float = 0.2
    """Back off while the live p99 is over its baseline by more than this share."""
    min_backoff: float = 0.05


@dataclass
class BackfillResult:
    items: int
    """Items imported (applied or skipped) by this run."""
    bytes: int
    skipped: int
    """Of those, already in the target at the same or a newer version."""
    seconds: float
    done: bool
    """Every namespace is copied (False: stopped, to be resumed)."""
    namespaces: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def items_per_s(self) -> float:
        return self.items / self.seconds if self.seconds > 0 else 0.0


class Pace:
    """Spaces pages so items/s and bytes/s stay under their limits (None: no limit),
    scaled by the back-off factor (AIMD on the live p99)."""

    def __init__(self, clock: Clock = time.monotonic,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:  # fmt: skip
        self.items_per_s: float | None = None
        self.bytes_per_s: float | None = None
        self.factor = 1.0
        self.baseline: float | None = None
        self.full_rate: tuple[float, float] | None = None
        """The (items/s, bytes/s) seen while not backing off: what the factor scales
        when the operator set no limit."""
        self._clock = clock
        self._sleep = sleep
        self._free_at = clock()

    def limits(self) -> tuple[float, float]:
        items = self.items_per_s or math.inf
        size = self.bytes_per_s or math.inf
        if self.factor < 1.0:
            full_items, full_bytes = self.full_rate or (math.inf, math.inf)
            items = min(items, full_items) * self.factor
            size = min(size, full_bytes) * self.factor
        return items, size

    def anchor(self) -> float:
        """Where the next page's turn starts: after the last page's, with at most 1 s
        of credit. A page that waits keeps its anchor, so its wait ends."""
        return max(self._free_at, self._clock() - 1.0)

    def _cost(self, items: int, size: int) -> float:
        items_limit, bytes_limit = self.limits()
        return max(items / items_limit, size / bytes_limit)

    def delay(self, items: int, size: int, anchor: float | None = None) -> float:
        """Seconds until a page of ``items`` and ``size`` bytes may go, under the limits as
        they are now (a throttle changed meanwhile changes the answer); 0: at once."""
        start = self.anchor() if anchor is None else anchor
        return max(0.0, start + self._cost(items, size) - self._clock())

    def commit(self, items: int, size: int, anchor: float | None = None) -> None:
        """The page went: its cost is spent."""
        start = self.anchor() if anchor is None else anchor
        self._free_at = start + self._cost(items, size)

    async def take(self, items: int, size: int) -> None:
        wait = self.delay(items, size)
        self.commit(items, size)
        if wait > 0:
            await self._sleep(wait)

    def judge(self, p99: float | None, tolerance: float, floor: float) -> str:
        """One AIMD step from a p99 reading: "" (nothing), "back off" or "recover"."""
        if p99 is None or p99 <= 0:
            return ""
        if self.baseline is None:
            self.baseline = p99
            return ""
        if p99 > self.baseline * (1 + tolerance):
            self.factor = max(floor, self.factor / 2)
            return "back off"
        if self.factor < 1.0:
            self.factor = min(1.0, self.factor + 0.1)
            return "recover"
        return ""


class _Run:
    def __init__(self, src: DalClient, dst: DalClient, state: MigrationState, options: BackfillOptions,
                 live_p99: LiveP99 | None, view: ProgressView | None, stop: asyncio.Event) -> None:  # fmt: skip
        self.src, self.dst, self.state, self.options = src, dst, state, options
        self.live_p99 = live_p99
        self.view = view
        self.stop = stop
        self.runner = options.runner_id or f"{socket.gethostname()}:{os.getpid()}"
        self.pace = Pace()
        self.section: dict[str, Any] = {}
        self.started = time.monotonic()
        self.run_items = self.run_bytes = self.run_skipped = 0
        self.last_checkpoint = time.monotonic()
        self._window: tuple[float, int, int] = (time.monotonic(), 0, 0)
        self.rate = 0.0

    # --- state -----------------------------------------------------------------------

    async def begin(self) -> None:
        data = await self.state.load()
        section = dict(data.get("backfill") or {})
        lease = section.get("lease") or {}
        now = time.time()
        if (
            lease
            and lease.get("runner") != self.runner
            and lease.get("expires", 0) > now
            and not self.options.take_over
        ):
            raise BackfillRefused(
                f"the backfill is running in {lease.get('runner')} (its lease ends in "
                f"{lease['expires'] - now:.0f} s); wait for it, or if it is dead, start this one with --take-over"
            )
        section.setdefault("namespaces", {})
        section.setdefault("totals", {"items": 0, "bytes": 0, "skipped": 0, "source_items": None})
        section.setdefault("started", now)
        section["lease"] = {"runner": self.runner, "expires": now + self.options.lease_s}
        section["done"] = False
        self.section = section
        self._throttle(data)
        await self.state.save({"backfill": self.section})

    def _throttle(self, data: dict[str, Any]) -> None:
        throttle = data.get("throttle") or {}
        self.pace.items_per_s = _positive(throttle.get("items_per_s"))
        self.pace.bytes_per_s = _positive(throttle.get("bytes_per_s"))

    async def checkpoint(self, *, final: bool = False) -> None:
        now = time.time()
        self.section["lease"] = (
            None if final else {"runner": self.runner, "expires": now + self.options.lease_s}
        )
        self.section["updated"] = now
        items_limit, bytes_limit = self.pace.limits()
        self.section["rate"] = {"items_per_s": round(self.rate, 1), "backoff": self.pace.factor,
                                "limit_items_per_s": None if math.isinf(items_limit) else round(items_limit, 1),
                                "limit_bytes_per_s": None if math.isinf(bytes_limit) else round(bytes_limit)}  # fmt: skip
        for attempt in range(5):
            try:
                await self.state.save({"backfill": self.section})
                break
            except StateLost:
                data = await self.state.load()  # someone else wrote: a throttle, or another runner
                lease = (data.get("backfill") or {}).get("lease") or {}
                if lease.get("runner") != self.runner:
                    raise StateLost(
                        f"runner {lease.get('runner')} took the backfill over; this one stops"
                    ) from None
                self._throttle(data)
                if attempt == 4:
                    raise
        self.last_checkpoint = time.monotonic()
        if self.live_p99 is not None:
            try:
                p99 = await self.live_p99()
            except Exception as e:  # a stats read that fails must not stop the copy
                log.warning("event=live_p99_unreadable error=%r", str(e))
                p99 = None
            said = self.pace.judge(p99, self.options.p99_tolerance, self.options.min_backoff)
            if said:
                log.info("event=backfill_%s p99_ms=%.2f baseline_ms=%.2f factor=%.2f", said.replace(" ", "_"),
                         p99 or 0, self.pace.baseline or 0, self.pace.factor)  # fmt: skip

    async def maybe_checkpoint(self) -> None:
        if time.monotonic() - self.last_checkpoint >= self.options.checkpoint_s:
            data = await self.state.load()
            self._throttle(data)
            await self.checkpoint()

    # --- copying ---------------------------------------------------------------------

    def _count(self, items: int, size: int, skipped: int) -> None:
        self.run_items += items
        self.run_bytes += size
        self.run_skipped += skipped
        totals = self.section["totals"]
        totals["items"] += items
        totals["bytes"] += size
        totals["skipped"] += skipped
        now = time.monotonic()
        t0, i0, b0 = self._window
        if now - t0 >= 1.0:
            self.rate = (self.run_items - i0) / (now - t0)
            if self.pace.factor >= 1.0:
                self.pace.full_rate = (self.rate, (self.run_bytes - b0) / (now - t0))
            self._window = (now, self.run_items, self.run_bytes)
        if self.view is not None:
            backoff = f"backing off x{self.pace.factor:.2f}" if self.pace.factor < 1 else ""
            self.view.update(totals["items"], totals.get("source_items"), self.rate, backoff)

    async def copy(self, namespace: str) -> bool:
        """Copy one namespace from its saved cursor; True when it is done."""
        ns = self.section["namespaces"].setdefault(namespace, {"cursor": "", "done": False, "items": 0,
                                                               "bytes": 0, "skipped": 0})  # fmt: skip
        if ns["done"]:
            return True
        cursor = base64.b64decode(ns["cursor"])
        page_bytes = self.options.page_size_bytes
        pending = asyncio.create_task(self.src.export(namespace, cursor, page_bytes))
        try:
            while True:
                page = await pending
                if page.next_cursor:
                    pending = asyncio.create_task(
                        self.src.export(namespace, page.next_cursor, page_bytes)
                    )
                if not await self._paced(page.items, page.size_bytes):
                    return False  # stopped while waiting its turn: the page is left for the next run
                imported = await self.dst.import_page(namespace, page.page)
                skipped = int(imported.skipped_as_older)
                ns["cursor"] = base64.b64encode(page.next_cursor).decode()
                ns["items"] += page.items
                ns["bytes"] += page.size_bytes
                ns["skipped"] += skipped
                self._count(page.items, page.size_bytes, skipped)
                if not page.next_cursor:
                    ns["done"] = True
                    return True
                if self.stop.is_set():
                    return False
                await self.maybe_checkpoint()
        finally:
            if not pending.done():
                pending.cancel()
                try:
                    await pending
                except (asyncio.CancelledError, DalError):
                    pass

    async def _paced(self, items: int, size: int) -> bool:
        """Wait for a page's turn under the rate limit: True, or False if ``stop`` was
        set meanwhile. At a low rate a turn may be many seconds away: the wait wakes
        at every checkpoint interval to checkpoint (the lease stays this runner's) and
        to read the throttle again, so raising a throttle acts at once."""
        anchor = self.pace.anchor()
        while True:
            wait = self.pace.delay(items, size, anchor)
            if wait <= 0:
                self.pace.commit(items, size, anchor)
                return True
            try:
                await asyncio.wait_for(self.stop.wait(), timeout=min(wait, self.options.checkpoint_s))
            except TimeoutError:
                pass
            if self.stop.is_set():
                return False
            await self.maybe_checkpoint()

    async def count_source(self, namespaces: list[str]) -> None:
        try:
            total = 0
            for ns in namespaces:
                [digest] = await self.src.digest(ns, [_everything()], count_only=True)
                total += int(digest.count)
            self.section["totals"]["source_items"] = total
        except DalError as e:
            log.warning("event=source_count_failed error=%r", str(e))


def _everything() -> Any:
    from .dal_client import span

    return span()


def _positive(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and value > 0 else None


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
    """Copy from the source DAL (gRPC ``host:port``) to the target until every namespace
    is done, or ``stop`` is set (then checkpointed, to be resumed). Raises
    BackfillRefused (another runner's lease), StateLost (the migration moved on:
    another runner took over, or it was rolled back), DalError (a DAL refused, or did
    not answer within its retries)."""
    src = DalClient(source, name="source")
    dst = DalClient(target, name="target")
    view = None
    try:
        namespaces = list(options.namespaces or await src.namespaces())
        missing = sorted(set(namespaces) - set(await dst.namespaces()))
        if missing:
            raise BackfillRefused(f"the target DAL ({target}) does not serve namespace(s) {', '.join(missing)}; "
                                  "declare them in its configuration first")  # fmt: skip
        if progress is not False:
            view = ProgressView("backfill", tty=progress)
        run = _Run(src, dst, state, options, live_p99, view, stop or asyncio.Event())
        await run.begin()
        counting = asyncio.create_task(run.count_source(namespaces))
        done = True
        try:
            for namespace in namespaces:
                if not await run.copy(namespace):
                    done = False
                    break
        finally:
            if not counting.done():
                counting.cancel()
        run.section["done"] = done
        await run.checkpoint(final=True)  # done or stopped, this runner ends: its lease goes
        seconds = time.monotonic() - run.started
        if view is not None:
            view.update(
                run.section["totals"]["items"], run.section["totals"].get("source_items"), run.rate
            )
            view.close()
            view = None
        return BackfillResult(run.run_items, run.run_bytes, run.run_skipped, seconds, done,
                              dict(run.section["namespaces"]))  # fmt: skip
    finally:
        if view is not None:
            view.close()
        await src.close()
        await dst.close()


# --- python -m dgw.migrate.backfill: a runner on a file state (tests, benchmarks) ---------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dgw.migrate.backfill",
                                     description="Copy a KV DAL's namespaces to another (state in a JSON file).")  # fmt: skip
    parser.add_argument("--source", required=True, help="the source DAL's gRPC address, host:port")
    parser.add_argument("--target", required=True, help="the target DAL's gRPC address, host:port")
    parser.add_argument(
        "--state", required=True, type=Path, help="the JSON file holding the migration's state"
    )
    parser.add_argument("--namespace", action="append", help="only these namespaces (default: all)")
    parser.add_argument("--page-bytes", type=int, default=1 << 20)
    parser.add_argument("--checkpoint-s", type=float, default=2.0)
    parser.add_argument("--lease-s", type=float, default=30.0)
    parser.add_argument(
        "--items-per-s", type=float, help="set the throttle in the state file first"
    )
    parser.add_argument(
        "--take-over", action="store_true", help="start even if another runner holds the lease"
    )
    parser.add_argument("--runner-id", default="")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    state = FileState(args.state)
    if args.items_per_s is not None:
        state.update(throttle={"items_per_s": args.items_per_s, "bytes_per_s": None})
    options = BackfillOptions(namespaces=args.namespace, page_size_bytes=args.page_bytes,
                              checkpoint_s=args.checkpoint_s, lease_s=args.lease_s, runner_id=args.runner_id,
                              take_over=args.take_over)  # fmt: skip
    try:
        result = asyncio.run(run_backfill(args.source, args.target, state, options))
    except (BackfillRefused, StateLost, DalError) as e:
        print(f"backfill: {e}", file=sys.stderr)
        return 1
    print(json.dumps({"items": result.items, "skipped": result.skipped, "bytes": result.bytes,
                      "seconds": round(result.seconds, 3), "items_per_s": round(result.items_per_s),
                      "done": result.done}))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
