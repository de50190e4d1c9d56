"""How much of a flood gets itemized: at most ``per_window`` events a window, the rest
counted and reported as one line when the next window opens.

A caller hammering a door (bad tokens, refused streams) must not grow an audit log or
a log file faster than this, and the record still says how much was refused. The
clock is passed in, so the arithmetic is tested without waiting.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable


class Budget:
    """``take()``: (itemize this event?, events left out in the window that just ended)."""

    def __init__(self, per_window: int = 60, window_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:  # fmt: skip
        self.per_window, self.window_s, self._clock = per_window, window_s, clock
        self._start = clock()
        self._used = 0
        self.suppressed = 0

    def take(self) -> tuple[bool, int]:
        now = self._clock()
        left_out = 0
        if now - self._start >= self.window_s:
            left_out, self.suppressed = self.suppressed, 0
            self._start, self._used = now, 0
        if self._used < self.per_window:
            self._used += 1
            return True, left_out
        self.suppressed += 1
        return False, left_out


class LogBudget:
    """WARNING lines through a ``Budget``: the first ``per_window`` of a window are
    logged, then one ``event=log_budget`` line per window counts those left out."""

    def __init__(self, logger: logging.Logger, what: str, budget: Budget | None = None) -> None:
        self._logger, self._what = logger, what
        self._budget = budget or Budget(per_window=20, window_s=60.0)

    def log(self, message: str, *args: object) -> None:
        itemize, left_out = self._budget.take()
        if left_out:
            self._logger.warning("event=log_budget what=%s left_out=%d window_s=%g per_window=%d",
                                 self._what, left_out, self._budget.window_s, self._budget.per_window)  # fmt: skip
        if itemize:
            self._logger.warning(message, *args)
