"""How a long migration step shows its progress: a bar with rate and ETA on a terminal
(``rich``), else one line every ``every_s`` seconds (logs, CI)."""

from __future__ import annotations

import sys
import time
from typing import IO

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn


def _si(n: float) -> str:
    for unit in ("", "k", "M", "G"):
        if abs(n) < 1000:
            return f"{n:.1f}{unit}" if unit else f"{n:.0f}"
        n /= 1000
    return f"{n:.1f}T"


def eta_text(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    s = int(seconds)
    return f"{s // 3600}h{s // 60 % 60:02}m" if s >= 3600 else f"{s // 60}m{s % 60:02}s"


class ProgressView:
    """``update(done, total, note)`` as often as wanted; ``close()`` at the end."""

    def __init__(
        self,
        title: str,
        *,
        tty: bool | None = None,
        every_s: float = 5.0,
        out: IO[str] | None = None,
    ) -> None:
        self.title = title
        self.out = out or sys.stderr
        self.tty = self.out.isatty() if tty is None else tty
        self.every_s = every_s
        self._started = time.monotonic()
        self._last_line: float | None = None
        self._bar: Progress | None = None
        self._task = None
        if self.tty:
            self._bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[note]}"), TimeRemainingColumn(),
                                 console=Console(file=self.out), transient=False)  # fmt: skip
            self._bar.start()
            self._task = self._bar.add_task(title, total=None, note="")

    def update(self, done: int, total: int | None, rate: float, note: str = "") -> None:
        text = f"{_si(rate)} items/s" + (f" {note}" if note else "")
        if self._bar is not None and self._task is not None:
            self._bar.update(self._task, completed=done, total=total, note=text)
            return
        now = time.monotonic()
        if self._last_line is not None and now - self._last_line < self.every_s:
            return
        self._last_line = now
        self.line(done, total, rate, note)

    def line(self, done: int, total: int | None, rate: float, note: str = "") -> None:
        share = f" ({100 * done / total:.1f}%)" if total else ""
        left = (total - done) / rate if total and rate > 0 and total >= done else None
        print(f"{self.title}: {done}/{total if total is not None else '?'} items{share}, {_si(rate)} items/s, "
              f"ETA {eta_text(left)}{' ' + note if note else ''}", file=self.out, flush=True)  # fmt: skip

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
