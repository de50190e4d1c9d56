"""The sidecar's Envoy supervisor: ACK/NACK judged from Envoy's counters (tables), and
against a real Envoy and ADS server: observed ready, a NACK seen and cleared, a killed
Envoy restarted, nothing left after stop. Reading ``status()`` never changes it."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from envoy_proxy import make_bootstrap
from sidecar.envoy_supervisor import Acceptance, EnvoyStatus, EnvoySupervisor
from sidecar.log import EventLog
from tests.ads.ads_samples import resources
from tests.ads.conftest import start_ads
from tests.support.procs import free_port
from xds_server.cache import SnapshotCache
from xds_server.resources import Resources

CDS_OK, CDS_BAD = "cluster_manager.cds.update_success", "cluster_manager.cds.update_rejected"
LDS_OK, LDS_BAD = "listener_manager.lds.update_success", "listener_manager.lds.update_rejected"


@pytest.mark.parametrize(
    ("before", "counts", "nacked", "acked"),
    [
        (Acceptance(), {}, False, False),  # nothing accepted yet
        (Acceptance(), {CDS_OK: 1}, False, False),  # listeners still to come
        (Acceptance(), {CDS_OK: 1, LDS_OK: 1}, False, True),
        (Acceptance({CDS_OK: 1, LDS_OK: 1}), {CDS_OK: 1, LDS_OK: 1, CDS_BAD: 1}, True, False),
        (Acceptance({CDS_OK: 1, LDS_OK: 1}), {CDS_OK: 1, LDS_OK: 1, LDS_BAD: 1}, True, False),
        # A NACK stays until a later update is accepted, however often Envoy is asked.
        (Acceptance({CDS_OK: 1, LDS_OK: 1, CDS_BAD: 1}, True), {CDS_OK: 1, LDS_OK: 1, CDS_BAD: 1}, True, False),
        (Acceptance({CDS_OK: 1, LDS_OK: 1, CDS_BAD: 1}, True), {CDS_OK: 2, LDS_OK: 1, CDS_BAD: 1}, False, True),
    ],
    ids=["nothing", "cds-only", "both", "cds-nack", "lds-nack", "nack-stays", "nack-cleared"],
)  # fmt: skip
def test_acceptance_from_counters(before, counts, nacked, acked):
    after = before.after(counts)
    assert (after.nacked, after.acked) == (nacked, acked)
    assert before.after(counts) == after  # a pure step: the same input, the same answer


def _config(connect_timeout_ms: int, listener_port: int) -> Resources:
    return resources(
        clusters={"c1": connect_timeout_ms},
        endpoints={"c1": (9000,)},
        listeners={"l1": (listener_port, "r1")},
        routes={"r1": "c1"},
    )


async def _until(
    supervisor: EnvoySupervisor, want: Callable[[EnvoyStatus], bool], what: str, timeout: float = 20.0
) -> EnvoyStatus:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not want(status := await supervisor.observe()):
        assert loop.time() < deadline, f"{what}: last status {status}"
        await asyncio.sleep(0.05)
    return status


@pytest.mark.envoy
async def test_supervised_envoy_is_observed_nacks_and_comes_back(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cache = SnapshotCache()
    server, address = await start_ads(cache)
    port = free_port()
    cache.set_shard("s1", _config(1000, port))
    notes: list[str] = []
    caplog.set_level(logging.INFO, logger="test.envoy")
    supervisor = EnvoySupervisor(
        bootstrap=make_bootstrap("s1", "n1", address),
        state_dir=tmp_path,
        binary=None,
        log_level="warning",
        backoff_max_s=1.0,
        crash_log_lines=5,
        log=EventLog("test.envoy"),
    )
    try:
        assert supervisor.status().state == "down"  # nothing observed yet
        await supervisor.start(notes.append)
        ready = await _until(supervisor, lambda s: s.state == "ready", "envoy ready")
        assert port in ready.ports
        assert supervisor.status() == ready == supervisor.status()  # reading changes nothing

        cache.set_shard("s1", _config(0, port))  # connect_timeout 0: Envoy rejects it
        await _until(supervisor, lambda s: not s.acked, "the NACK seen")
        assert supervisor.status().state == "starting"
        cache.set_shard("s1", _config(2000, port))
        await _until(supervisor, lambda s: s.state == "ready", "ready again after a good update")

        pid = _started_pids(caplog)[-1]
        os.kill(pid, signal.SIGKILL)
        await _until(supervisor, lambda s: s.state == "ready" and len(_started_pids(caplog)) == 2,
                     "a restarted envoy, ready")  # fmt: skip
        assert notes == ["envoy started", "envoy exited", "envoy started"]
        assert "exited with code 137 (SIGKILL)" in caplog.text
    finally:
        await supervisor.stop()
        await server.stop(None)
    for pid in _started_pids(caplog):
        with pytest.raises(ProcessLookupError):
            os.killpg(pid, 0)


def _started_pids(caplog: pytest.LogCaptureFixture) -> list[int]:
    return [int(m) for m in re.findall(r"event=envoy_started pid=(\d+)", caplog.text)]
