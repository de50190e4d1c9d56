"""The runner's pieces that need no DAL: its state (If-Match in memory and in a file),
the lease that keeps two runners apart, the AIMD back-off on the live p99, the rate
limits it applies, and the progress line."""

from __future__ import annotations

import io
import math
import time
from pathlib import Path
from typing import Any

import pytest

from dgw.migrate.backfill import BackfillOptions, BackfillRefused, Pace, _Run
from dgw.migrate.progress import ProgressView
from dgw.migrate.state import FileState, MemoryState, StateLost


@pytest.mark.parametrize("kind", ["memory", "file"])
async def test_a_save_on_a_moved_record_is_refused_and_changes_nothing(
    kind: str, tmp_path: Path
) -> None:
    state: Any = MemoryState() if kind == "memory" else FileState(tmp_path / "m.json")
    await state.load()
    await state.save({"backfill": {"done": False}, "phase": "ignored: not the runner's"})
    state.update(throttle={"items_per_s": 10})  # the operator, meanwhile
    with pytest.raises(StateLost):
        await state.save({"backfill": {"done": True}})
    data = await state.load()
    assert (
        data["backfill"] == {"done": False}
        and data["throttle"] == {"items_per_s": 10}
        and "phase" not in data
    )
    await state.save({"backfill": {"done": True}})
    assert (await state.load())["backfill"] == {"done": True}


async def test_another_runners_live_lease_is_refused_unless_taken_over() -> None:
    state = MemoryState(
        {"backfill": {"lease": {"runner": "host-a:1", "expires": time.time() + 60}}}
    )

    def run(take_over: bool) -> _Run:
        return _Run(None, None, state, BackfillOptions(runner_id="host-b:2", take_over=take_over), None, None,  # type: ignore[arg-type]
                    None)  # type: ignore[arg-type]  # fmt: skip

    with pytest.raises(BackfillRefused, match=r"running in host-a:1 .*--take-over"):
        await run(False).begin()
    await run(True).begin()
    assert state.data["backfill"]["lease"]["runner"] == "host-b:2"
    # An expired lease needs no take-over.
    expired = MemoryState(
        {"backfill": {"lease": {"runner": "host-a:1", "expires": time.time() - 1}}}
    )
    await _Run(None, None, expired, BackfillOptions(runner_id="c"), None, None, None).begin()  # type: ignore[arg-type]


def test_the_rate_halves_while_p99_is_over_its_baseline_and_grows_back_after() -> None:
    pace = Pace()
    pace.full_rate = (10_000.0, 10e6)
    assert pace.judge(0.010, 0.2, 0.05) == "" and pace.baseline == 0.010
    assert pace.judge(0.0115, 0.2, 0.05) == "" and pace.factor == 1.0  # within the tolerance
    assert pace.judge(0.020, 0.2, 0.05) == "back off" and pace.factor == 0.5
    assert pace.limits() == (5_000.0, 5e6)
    for _ in range(10):
        pace.judge(0.050, 0.2, 0.05)
    assert pace.factor == 0.05  # the floor
    assert pace.judge(None, 0.2, 0.05) == ""  # no reading: no change
    assert pace.judge(0.009, 0.2, 0.05) == "recover" and math.isclose(pace.factor, 0.15)
    for _ in range(10):
        pace.judge(0.009, 0.2, 0.05)
    assert pace.factor == 1.0 and pace.limits() == (math.inf, math.inf)


async def test_pages_are_spaced_to_the_tighter_of_the_two_limits() -> None:
    slept: list[float] = []

    async def sleep(s: float) -> None:
        slept.append(s)

    pace = Pace(
        clock=lambda: 100.0, sleep=sleep
    )  # time stands still: every page waits its whole share
    pace.items_per_s, pace.bytes_per_s = 1000.0, 1e6
    await pace.take(500, 100)  # 0.5 s of items
    await pace.take(10, 2_000_000)  # 2 s of bytes
    assert slept == [pytest.approx(0.5), pytest.approx(2.5)]


def test_a_page_waiting_its_turn_sees_a_throttle_raised_meanwhile() -> None:
    # The runner asks again at every checkpoint while a page waits: the wait is the
    # throttle's as it is then, not as it was when the page came (2 items/s and a page
    # of 1,000 items was 500 s, whatever the operator did meanwhile).
    pace = Pace(clock=lambda: 100.0)
    pace.items_per_s = 2.0
    assert pace.delay(1000, 0) == pytest.approx(500.0)
    pace.items_per_s = 10_000.0
    assert pace.delay(1000, 0) == pytest.approx(0.1)
    pace.commit(1000, 0)
    assert pace.delay(1000, 0) == pytest.approx(0.2)  # the page that went is paid for


def test_a_page_that_waits_keeps_its_place_so_its_wait_ends() -> None:
    now = [100.0]
    pace = Pace(clock=lambda: now[0])
    pace.items_per_s = 150.0
    place = pace.anchor()
    assert pace.delay(1000, 0, place) == pytest.approx(1000 / 150)
    now[0] += 5.0  # woke at checkpoints meanwhile
    assert pace.delay(1000, 0, place) == pytest.approx(1000 / 150 - 5)
    now[0] += 2.0
    assert pace.delay(1000, 0, place) == 0.0


def test_without_a_terminal_progress_is_a_line_every_few_seconds() -> None:
    out = io.StringIO()
    view = ProgressView("backfill", tty=False, every_s=3600, out=out)
    view.update(250, 1000, 50.0)
    view.update(500, 1000, 50.0)  # within every_s of the last line: nothing
    view.close()
    assert out.getvalue() == "backfill: 250/1000 items (25.0%), 50 items/s, ETA 0m15s\n"
