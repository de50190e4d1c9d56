"""A real ``dgw server`` child process with its config dir, driven over HTTP."""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import yaml

from dgw_api.v1 import gateway_pb2_grpc
from envoy_proxy import BlockingEnvoy
from envoy_proxy.stats import ENVOY_FILTER, parse_sample
from sidecar.stats_sender import stats_message
from testkit.ports import free_port
from testkit.wait import wait_until

from .procs import Child


class XdsServerProcess:
    def __init__(self, workdir: Path):
        self.config_dir = workdir / "shards"
        self.config_dir.mkdir(exist_ok=True)
        self.data_dir = workdir / "data"  # the config store: kept across restarts
        self.xds_port = free_port()
        self.admin_port = free_port()
        self.workdir = workdir
        self.data_dir = workdir / "data"
        self.child: Child | None = None

    def start(self) -> XdsServerProcess:
        self.child = Child(
            [sys.executable, "-m", "dgw.cli", "server", "--insecure", "--config-dir", str(self.config_dir),
             "--xds", f"127.0.0.1:{self.xds_port}", "--admin", f"127.0.0.1:{self.admin_port}",
             "--data-dir", str(self.data_dir)],
            log=self.workdir / "xds_server.log",
        )
        child = self.child
        wait_until(lambda: child.serving(self.admin_port, "dgw server"), 20, what="the dgw server's admin port")
        return self

    def stop(self) -> None:
        if self.child:
            self.child.stop()

    def write_shard(self, shard: str, config: dict | str) -> None:
        text = config if isinstance(config, str) else yaml.safe_dump(config)
        path = self.config_dir / f"{shard}.yaml"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.rename(path)  # atomic, like a careful operator's editor

    @property
    def token(self) -> str:
        """The admin token the server made on its first start (the admin API needs one)."""
        return (self.data_dir / "admin.token").read_text().strip()

    def get(self, path: str) -> dict:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.admin_port}{path}", headers={"Authorization": f"Bearer {self.token}"}
        )
        with urllib.request.urlopen(request, timeout=3) as r:
            return json.loads(r.read())

    def post(self, path: str, body: dict) -> dict:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.admin_port}{path}", data=json.dumps(body).encode(),
            headers={"content-type": "application/json", "Authorization": f"Bearer {self.token}"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=3) as r:
            return json.loads(r.read())

    def call(self, method: str, path: str, body: dict | None = None,
             if_match: int | None = None, timeout: float = 5) -> tuple[int, dict]:
        """Any admin API request; an HTTP error status is returned, not raised."""
        headers = {"content-type": "application/json", "Authorization": f"Bearer {self.token}"}
        if if_match is not None:
            headers["If-Match"] = f'"{if_match}"'
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.admin_port}{path}",
            data=None if body is None else json.dumps(body).encode(), headers=headers, method=method,
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"{}")

    def report(self, shard: str, node_id: str, endpoints: list[dict]) -> None:
        self.post("/v1/reports", {"shard": shard, "node_id": node_id, "endpoints": endpoints})

    def send_stats(self, envoy: BlockingEnvoy) -> None:
        """Send ``envoy``'s selected stats the way a sidecar does (``ReportStats``): two
        calls make a window of ``GET /v1/stats``."""
        data = json.loads(envoy.admin_text("/stats", {"format": "json", "filter": ENVOY_FILTER,
                                                      "histogram_buckets": "cumulative"}))  # fmt: skip
        message = stats_message(envoy.shard, envoy.node_id, f"pid-{envoy.pid}", parse_sample(data))
        with grpc.insecure_channel(f"127.0.0.1:{self.xds_port}") as channel:
            gateway_pb2_grpc.GatewayStub(channel).ReportStats(message, timeout=5)  # type: ignore[no-untyped-call]

    def shard(self, shard: str) -> dict:
        return self.get(f"/v1/shards/{shard}")

    def log(self) -> str:
        return self.child.log() if self.child else ""
