"""How fast new xDS streams start: a reconnect storm is paced, not refused.

When a replica dies, its nodes reconnect to the others at once. Each new stream costs a
first exchange (its requests, and whatever its node is missing), so thousands
arriving together could take the surviving replicas' loop for seconds while the
streams they already serve wait. ``StartPacer`` lets at most ``per_s`` streams a second
start (a second's worth at once), and makes the rest wait their turn before their
first response: the node's stream is open, nothing is refused, and the streams already
served keep their share. Envoy's own reconnect backoff spreads the rest.

GCRA (the "virtual scheduling" form of a token bucket): each start takes the next
slot ``1/per_s`` after the last; a slot up to one second ahead of now starts at once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


class StartPacer:
    def __init__(self, per_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_s = per_s
        self._clock = clock
        self._next = 0.0  # the next free slot
        self.waited = 0  # streams that had to wait (for metrics and tests)

    def delay(self) -> float:
        """Take a slot; how long to wait before using it (0: now)."""
        if self.per_s <= 0:
            return 0.0
        now = self._clock()
        slot = max(self._next, now)
        self._next = slot + 1.0 / self.per_s
        wait = slot - now - 1.0  # a second's worth of slots starts at once
        return max(0.0, wait)

    async def admit(self) -> None:
        wait = self.delay()
        if wait > 0:
            self.waited += 1
            await asyncio.sleep(wait)
