"""Acceptance: ``kill -9`` of the server and a restart cost a live gateway nothing.

A real sidecar runs container DALs and a real Envoy; a bounded request loop goes
through that Envoy while the server is killed and started again on the same ports.
The restarted server reads the node reports it persisted, so the reconnecting Envoy
gets the endpoints it had instead of an empty assignment (503s until the sidecar's
next report, before).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from dgw_api.v1 import gateway_pb2
from tests.sidecar.conftest import dal_image  # noqa: F401 (a fixture)
from tests.sidecar.host import NODE, Host, until
from xds_server import report_file

REQUESTS = 2_000  # at most, over at most 60 s


@pytest.mark.envoy
@pytest.mark.docker
@pytest.mark.slow
def test_kill_9_and_restart_of_the_server_fails_no_request(tmp_path: Path, dal_image):  # noqa: F811
    host = Host(tmp_path, "docker")
    try:
        host.write(host.config())
        host.start_sidecar()
        host.wait_healthy("cql", "thrift", timeout=90)
        until(lambda: host.answered_by("beta") == "thrift", 30, what="Envoy serving")
        reports = host.server.data_dir / "reports.json"
        until(lambda: _persisted_healthy(reports.parent, host.shard), 10, what="reports persisted")

        failures: list[str] = []
        sent = 0
        killed_at = restarted_at = None
        deadline = time.monotonic() + 60
        while sent < REQUESTS and time.monotonic() < deadline:
            if sent == 50:
                host.server.child.kill()  # SIGKILL to its process group
                killed_at = time.monotonic()
            if sent == 100:
                host.server.start()
                restarted_at = time.monotonic()
            if restarted_at and time.monotonic() - restarted_at > 12 and sent >= 300:
                break  # the Envoy has reconnected and the sidecar has reported again
            try:
                status, body = host.get("beta")
                if status != 200 or body.get("dal") != "thrift":
                    failures.append(f"{_since(killed_at)} {status} {body}")
            except OSError as e:
                failures.append(f"{_since(killed_at)} {e!r}")
            sent += 1
        assert killed_at and restarted_at, "the loop ended before the restart"
        assert failures == [], failures[:5]
        assert host.server.shard(host.shard)["reports"][NODE]["generation"] >= 1
    finally:
        host.close()


def _since(start: float | None) -> str:
    return "before the kill" if start is None else f"{time.monotonic() - start:.2f}s after the kill"


def _persisted_healthy(directory: Path, shard: str) -> bool:
    return any(
        s == shard and node.report.endpoints
        and all(e.health == gateway_pb2.HEALTHY for e in node.report.endpoints)
        for s, node in report_file.read(directory, time.time(), 3600)
    )
