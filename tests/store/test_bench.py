"""``dgw bench store`` end to end on tiny sizes: one JSON object with the figures."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

# A child process doing a few hundred synchronous commits: seconds.
pytestmark = pytest.mark.slow


def test_bench_store_reports_write_latency_and_history_listing() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "dgw.cli", "bench", "store", "--versions", "30", "--history", "120",
         "--repeats", "3", "--json", "--no-save"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.stdout.strip(), done.stderr[-3000:]
    result = json.loads(done.stdout)
    write, history = result["write"], result["history"]
    assert write["versions"] == 30 and 0 < write["p50_ms"] <= write["p99_ms"] <= write["max_ms"]
    assert (
        history["versions"] == 120 and 0 < history["list_all_p50_ms"] <= history["list_all_p99_ms"]
    )
    assert history["page_p50_ms"] > 0 and result["db_bytes"] > 0
    (target,) = result["targets"]
    assert target["ok"] == (target["value"] <= 50) and done.returncode == (0 if target["ok"] else 1)
