"""How a case compares with its baseline when both were measured in interleaved rounds.

A p99 below a millisecond on a shared 2-core virtual machine moves by tens of per cent
from one minute to the next. Measuring the cases interleaved, round after round, makes
every round a paired sample (the same minute of the machine for both); resampling the
rounds with replacement (a paired bootstrap) then says how far the ratio of the pooled
percentiles can be trusted.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

from bench.report import percentile


def pooled(rounds: Sequence[Sequence[float]]) -> list[float]:
    return [v for r in rounds for v in r]


def ratio_pct(base: Sequence[Sequence[float]], case: Sequence[Sequence[float]], q: float) -> float:
    """The case's pooled ``q``-th percentile over the baseline's, minus 1, in per cent."""
    b = percentile(pooled(base), q)
    return (percentile(pooled(case), q) / b - 1) * 100 if b else math.nan


def ratio_interval(
    base: Sequence[Sequence[float]], case: Sequence[Sequence[float]], q: float,
    resamples: int = 400, confidence: float = 0.9, seed: int = 1,
) -> tuple[float, float]:  # fmt: skip
    """A ``confidence`` interval of :func:`ratio_pct`, resampling the paired rounds.

    Round ``i`` of ``base`` and of ``case`` were measured back to back, so a resample
    draws round indices and takes both sides of each; deterministic for a ``seed``."""
    n = min(len(base), len(case))
    if n < 2:
        return math.nan, math.nan
    rng = random.Random(seed)
    ratios = []
    for _ in range(resamples):
        picks = [rng.randrange(n) for _ in range(n)]
        ratios.append(ratio_pct([base[i] for i in picks], [case[i] for i in picks], q))
    tail = (1 - confidence) / 2 * 100
    return percentile(ratios, tail), percentile(ratios, 100 - tail)
