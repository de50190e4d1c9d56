"""A user's ``dgw bench`` run never rewrites the tracked ``bench/results`` (issue 10,
point 10): files go to a scratch directory unless ``--out`` says otherwise."""

from __future__ import annotations

from pathlib import Path

from .run import ROOT, dgw

TRACKED = ROOT / "bench" / "results"


def _snapshot() -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_mtime_ns, p.stat().st_size) for p in TRACKED.iterdir()}


def test_bench_writes_to_a_scratch_dir_by_default(tmp_path: Path) -> None:
    before = _snapshot()

    proc = dgw("bench", "translate-scale", "--sizes", "10", "--edits", "2",
               env={"XDG_CACHE_HOME": str(tmp_path), "MPLCONFIGDIR": str(tmp_path / "mpl")}, timeout=120)

    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "dgw" / "bench" / "translate-scale.json").is_file()
    assert f"files written to {tmp_path / 'dgw' / 'bench'}" in proc.stderr
    assert _snapshot() == before


def test_bench_help_says_how_to_update_the_tracked_results() -> None:
    assert "--out bench/results updates the tracked results" in " ".join(
        dgw("bench", "translate-scale", "--help").stdout.split()
    )
