"""The polling helpers: they return the first truthy value, and a timeout says what was
awaited and what was last seen."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from testkit.procs import ChildExited
from testkit.wait import WaitTimeout, eventually, wait_until


def test_wait_until_returns_the_first_truthy_value() -> None:
    values = iter([0, None, "", 7, 8])
    assert wait_until(lambda: next(values), 5, interval=0) == 7


def test_a_timeout_names_what_was_awaited_and_the_last_value_seen() -> None:
    counter = itertools.count()
    with pytest.raises(WaitTimeout, match=r"waiting for the answer; last observed: \[\]") as caught:
        wait_until(lambda: [] if next(counter) >= 0 else None, 0.05, interval=0.01, what="the answer")
    assert isinstance(caught.value, AssertionError)  # pytest reports it as a failed check


def test_an_exception_is_not_yet_and_is_shown_at_the_deadline() -> None:
    def refused() -> bool:
        raise ConnectionRefusedError("nobody listens")

    with pytest.raises(WaitTimeout, match="last observed: ConnectionRefusedError: nobody listens") as caught:
        wait_until(refused, 0.05, interval=0.01, what="the port")
    assert isinstance(caught.value.__cause__, ConnectionRefusedError)


def test_an_assertion_is_retried_until_it_holds() -> None:
    calls = itertools.count()

    def third_time() -> bool:
        assert next(calls) >= 2, "not yet"
        return True

    assert wait_until(third_time, 5, interval=0)


def test_a_child_that_exited_ends_the_wait_at_once() -> None:
    calls = itertools.count()

    def dead() -> bool:
        next(calls)
        raise ChildExited("dal exited (1)")

    with pytest.raises(ChildExited):
        wait_until(dead, 60, interval=0)
    assert next(calls) == 1


async def test_eventually_polls_state_the_event_loop_changes() -> None:
    state: list[str] = []
    asyncio.get_running_loop().call_soon(state.append, "done")
    assert await eventually(lambda: state, 5, what="the callback") == ["done"]


async def test_eventually_times_out_with_the_last_assertion() -> None:
    def never() -> bool:
        raise AssertionError("3 of 20 nodes acked")

    with pytest.raises(WaitTimeout, match="waiting for every ACK; last observed: AssertionError: 3 of 20"):
        await eventually(never, 0.05, what="every ACK")
