"""Percentiles and tables of the bench report."""

from __future__ import annotations

import math

import pytest

from bench.report import percentile, table


def test_percentile_is_nearest_rank_over_observed_values() -> None:
    values = list(range(1, 101))
    assert percentile(values, 50) == 50
    assert percentile(values, 99) == 99
    assert percentile(values, 100) == 100
    assert percentile([7.0], 99) == 7.0
    assert math.isnan(percentile([], 50))


def test_table_aligns_columns_and_marks_failures() -> None:
    text = table([{"a": 1000, "b": 0.12345, "ok": False}], ["a", "b", "ok"], "title")
    lines = text.splitlines()
    assert lines[0] == "title"
    assert lines[1].split() == ["a", "b", "ok"]
    assert lines[3].split() == ["1,000", "0.123", "NO"]


def test_fleet_plot_draws_each_run_from_its_percentiles(tmp_path) -> None:
    pytest.importorskip("matplotlib")
    from bench.fleet import plot

    runs = [{"nodes": n, "p99_ms": n / 10, "cdf_ms": [n / 1000 * q for q in range(101)]} for n in (1000, 5000)]
    path = tmp_path / "fleet.png"
    plot(runs, path, "test")
    assert path.read_bytes().startswith(b"\x89PNG")
