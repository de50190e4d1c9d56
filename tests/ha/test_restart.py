"""Restarts cost nothing, by design (issue #23, point 7): the single ``dgw server``
killed with ``kill -9`` and started again with the same flags, ten times, while both
cores are busy with other work and a request goes through the gateway every 50 ms —
as an operator would try it: the secure default (mTLS, the host joined with a token),
the process runtime. Not one request may fail.

Why none can: the restarted server reads every node's last report before it serves
(``report_file``), and a config's Envoy resources get the same versions in every
process (``translate/packing.py``), so a reconnecting Envoy is sent nothing it holds.
"""

from __future__ import annotations

import json
import sys
import urllib.request
from pathlib import Path

import pytest
import yaml

from common.files import write_private
from testkit.ports import free_port
from testkit.procs import Child
from testkit.wait import wait_until
from tests.ha.traffic import Traffic, busy_cpus

pytestmark = [pytest.mark.envoy, pytest.mark.slow]

RESTARTS = 10


def _shard(port: int, secure_port: int) -> str:
    """The demo shard's shape: a plain HTTP listener (the traffic) and a secured gRPC one
    (mTLS from the local CA, consumers as RBAC)."""
    py = sys.executable
    probe = "http://127.0.0.1:$${DGW_LISTENER_API_PORT}/health"
    return yaml.safe_dump({
        "proxy_config": {"public_listeners": {
            "api": {"mode": "http", "path": port},
            "secure_grpc": {"mode": "grpc", "tls_creds": "metatron", "authz": "gandalf", "path": secure_port},
        }},
        "container_dals": {"main": {
            "container_cmd": [py, "-m", "dals.sample"], "container_listeners": {"api": 8080, "secure_grpc": 8981},
            "env": {"DGW_DAL_NAME": "main"},
            "healthcheck": {"test": ["CMD-SHELL", f"{py} -m dals.sample.probe {probe}"],
                            "interval": "500ms", "timeout": "2s", "retries": 2},
        }},
        "deploy_desires": {"consumers": [
            {"type": "account-app", "value": "demo-app", "group": "read-write"},
            {"type": "account-app", "value": "demo-reader", "group": "read-only"},
        ]},
    })  # fmt: skip


class _Server:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.config_dir = workdir / "shards"
        self.config_dir.mkdir()
        self.data = workdir / "data"
        self.xds, self.admin, self.join = free_port(), free_port(), free_port()
        self.runs = 0
        self.child: Child | None = None

    def start(self) -> None:
        self.runs += 1
        self.child = Child(
            [sys.executable, "-m", "dgw.cli", "server", "--config-dir", str(self.config_dir), "--data-dir",
             str(self.data), "--xds", f"127.0.0.1:{self.xds}", "--admin", f"127.0.0.1:{self.admin}",
             "--join", f"127.0.0.1:{self.join}"], self.workdir / f"server-{self.runs}.log")  # fmt: skip
        child = self.child
        wait_until(lambda: child.serving(self.admin, "dgw server"), 60, what="the server's admin port")

    def api(self, method: str, path: str, body: dict | None = None) -> dict:
        token = (self.data / "admin.token").read_text().strip()
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.admin}{path}", method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {token}", "content-type": "application/json"},
        )  # fmt: skip
        with urllib.request.urlopen(request, timeout=10) as r:
            return dict(json.loads(r.read()))

    def node_synced(self, shard: str, node: str) -> bool:
        rows = self.api("GET", f"/v1/status?shard={shard}")["nodes"]
        return any(r["node"] == node and r["in_sync"] for r in rows)

    def log(self) -> str:
        return "\n".join((self.workdir / f"server-{i}.log").read_text(errors="replace")[-2000:]
                         for i in range(max(1, self.runs - 1), self.runs + 1))  # fmt: skip


def test_ten_kill_9_restarts_of_the_server_under_cpu_load_fail_no_request(tmp_path: Path) -> None:
    server = _Server(tmp_path)
    port = free_port()
    (server.config_dir / "restart.yaml").write_text(_shard(port, free_port()))
    server.start()
    token = server.api("POST", "/v1/tokens", {"role": "node", "shard": "restart", "name": "restart-join",
                                              "one_time": True, "ttl_s": 600})["token"]  # fmt: skip
    write_private(tmp_path / "join.token", token.encode())
    sidecar = Child(
        [sys.executable, "-m", "dgw.cli", "sidecar", "--server", f"127.0.0.1:{server.xds}", "--join-server",
         f"127.0.0.1:{server.join}", "--shard", "restart", "--node-id", "n1", "--runtime", "process",
         "--state-dir", str(tmp_path / "state"), "--join-token-file", str(tmp_path / "join.token"),
         "--trust-bundle", str(server.data / "ca" / "ca.crt"), "--stop-dals-on-exit"],
        tmp_path / "sidecar.log",
    )  # fmt: skip
    traffic = Traffic([f"http://127.0.0.1:{port}/"], max_seconds=300)
    try:
        wait_until(lambda: sidecar.check("sidecar") or _answers(port), 90, what="the gateway answering")
        wait_until(lambda: server.node_synced("restart", "n1"), 30, what="n1 SYNCED")
        with busy_cpus(tmp_path):
            traffic.start()
            for restart in range(RESTARTS):
                seen = traffic.sent
                wait_until(lambda seen=seen: traffic.sent >= seen + 10, 30, what="requests flowing")
                assert server.child is not None
                server.child.kill()
                server.start()
                wait_until(lambda: server.node_synced("restart", "n1"), 60,
                           what=f"restart {restart + 1}: the Envoy back on the server\n{server.log()}")
            seen = traffic.sent
            wait_until(lambda: traffic.sent >= seen + 20, 30, what="requests after the last restart")
    finally:
        traffic.stop()
        sidecar.stop(timeout=20)
        if server.child is not None:
            server.child.stop()
    assert traffic.sent >= 10 * (RESTARTS + 1)
    assert not traffic.failures, f"{traffic.summary()}\n{server.log()}"


def _answers(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=3) as r:
            return bool(r.status == 200)
    except OSError:
        return False
