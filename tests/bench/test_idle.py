"""The PM QoS request a latency figure holds while it measures (bench/idle.py)."""

from __future__ import annotations

import struct

from bench.idle import quick_wakeups


def test_writes_the_request_at_once_and_holds_it_for_the_block(tmp_path) -> None:
    device = tmp_path / "cpu_dma_latency"
    device.write_bytes(b"")
    with quick_wakeups(0, str(device)) as held:
        assert held == 0
        assert device.read_bytes() == struct.pack("i", 0)  # unbuffered: in force before the block runs


def test_without_the_device_the_figure_still_runs(tmp_path) -> None:
    with quick_wakeups(0, str(tmp_path / "missing" / "cpu_dma_latency")) as held:
        assert held is None
