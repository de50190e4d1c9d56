"""Paired comparison of interleaved rounds (bench/stats.py)."""

from __future__ import annotations

import math
import random

from bench.stats import pooled, ratio_interval, ratio_pct


def test_ratio_of_pooled_percentiles() -> None:
    base = [[1.0] * 97 + [2.0] * 3, [1.0] * 97 + [2.0] * 3]  # p99 of the 200: 2.0
    case = [[1.0] * 97 + [2.2] * 3, [1.0] * 97 + [2.2] * 3]
    assert pooled(base) == base[0] + base[1]
    assert ratio_pct(base, case, 99) == (2.2 / 2.0 - 1) * 100
    assert ratio_pct(base, base, 99) == 0.0


def test_interval_holds_the_estimate_and_narrows_with_rounds() -> None:
    rng = random.Random(7)

    def rounds(n: int, scale: float) -> list[list[float]]:
        return [[rng.expovariate(1.0) * scale for _ in range(200)] for _ in range(n)]

    few_base, few_case = rounds(4, 1.0), rounds(4, 1.3)
    many_base, many_case = rounds(64, 1.0), rounds(64, 1.3)
    low, high = ratio_interval(many_base, many_case, 99)
    assert low <= ratio_pct(many_base, many_case, 99) <= high
    assert 0 < low < high < 60  # a true +30 % is told apart from none
    few_low, few_high = ratio_interval(few_base, few_case, 99)
    assert high - low < few_high - few_low


def test_interval_is_paired_and_deterministic() -> None:
    # Each round's level drifts (a noisy machine); the case is the base + 5 % in every
    # round. Resampling rounds in pairs keeps the drift out of the ratio.
    rng = random.Random(3)
    base, case = [], []
    for _ in range(30):
        level = rng.uniform(0.5, 2.0)
        values = [level * rng.uniform(0.9, 1.1) for _ in range(100)]
        base.append(values)
        case.append([v * 1.05 for v in values])
    low, high = ratio_interval(base, case, 99)
    assert math.isclose(low, 5.0, abs_tol=1e-9) and math.isclose(high, 5.0, abs_tol=1e-9)
    assert ratio_interval(base, case, 99) == (low, high)
    assert all(math.isnan(v) for v in ratio_interval(base[:1], case[:1], 99))
