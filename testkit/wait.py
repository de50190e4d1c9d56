"""Waiting on a condition with a deadline, never a fixed sleep as synchronisation.

``wait_until`` (threads, child processes) and ``eventually`` (inside an event loop) poll
``predicate`` until it returns a truthy value, and return that value. A falsy value or
an exception — an assertion that does not hold yet, a connection refused — counts as
"not yet" and is kept as the last observation, which the timeout's message shows. An
exception of a ``fatal`` type (by default ``ChildExited``: a dead child will not come
up) ends the wait at once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Generic, TypeVar

from testkit.procs import ChildExited

T = TypeVar("T")
Fatal = tuple[type[BaseException], ...]


class WaitTimeout(AssertionError):
    """The deadline passed; the message names what was awaited and what was last seen."""


class _Poll(Generic[T]):
    """One wait's deadline and last observation, shared by the sync and async loops."""

    def __init__(self, predicate: Callable[[], T], timeout: float, what: str, fatal: Fatal) -> None:
        self.predicate = predicate
        self.timeout = timeout
        self.what = what or getattr(predicate, "__qualname__", repr(predicate))
        self.fatal = fatal
        self.deadline = time.monotonic() + timeout
        self.last: object = None
        self.error: Exception | None = None

    def attempt(self) -> T | None:
        try:
            value = self.predicate()
        except self.fatal:
            raise
        except Exception as e:
            self.error, self.last = e, f"{type(e).__name__}: {e}"
            return None
        self.error, self.last = None, value
        return value

    def expired(self) -> bool:
        return time.monotonic() >= self.deadline

    def timed_out(self) -> WaitTimeout:
        error = WaitTimeout(f"timed out after {self.timeout:g}s waiting for {self.what}; last observed: {self.last!s}")
        error.__cause__ = self.error
        return error


def wait_until(
    predicate: Callable[[], T], timeout: float = 10.0, interval: float = 0.02, what: str = "",
    *, fatal: Fatal = (ChildExited,),
) -> T:
    """Poll ``predicate`` every ``interval`` seconds until truthy; its value, or WaitTimeout."""
    poll = _Poll(predicate, timeout, what, fatal)
    while True:
        value = poll.attempt()
        if value:
            return value
        if poll.expired():
            raise poll.timed_out()
        time.sleep(interval)


async def eventually(
    predicate: Callable[[], T], timeout: float = 5.0, interval: float = 0.01, what: str = "",
    *, fatal: Fatal = (ChildExited,),
) -> T:
    """``wait_until`` for a predicate on state the running event loop changes."""
    poll = _Poll(predicate, timeout, what, fatal)
    while True:
        value = poll.attempt()
        if value:
            return value
        if poll.expired():
            raise poll.timed_out()
        await asyncio.sleep(interval)
