"""Exponential backoff, the one formula every retry in the project uses."""

from __future__ import annotations

import random


def backoff_delay(attempts: int, base_s: float, max_s: float) -> float:
    """The wait before the next try after ``attempts`` failed ones: 0, base, 2·base,
    4·base … capped at ``max_s``."""
    if attempts <= 0:
        return 0.0
    return float(min(base_s * 2 ** (attempts - 1), max_s))


def jittered(delay_s: float, rng: random.Random | None = None) -> float:
    """Between half and all of ``delay_s``, so that many clients do not retry in step."""
    r = (rng or random.Random()).random()
    return delay_s * (0.5 + r / 2)
