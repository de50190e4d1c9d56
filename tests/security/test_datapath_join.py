"""``dgw client-proxy --join``: an application's first certificate from a one-time
``client`` token, against a server with its default mTLS control channel. The token
names the consumer; the proxy's Envoy then reaches the server's ADS over mTLS as that
consumer (which may use only the discovery shard)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from testkit.ports import free_port
from testkit.wait import wait_until
from tests.cli.run import DGW
from tests.support.procs import Child

pytestmark = [pytest.mark.envoy, pytest.mark.slow]


def test_a_client_token_gives_the_proxy_its_consumer_identity(tmp_path: Path) -> None:
    shards, data = tmp_path / "shards", tmp_path / "data"
    shards.mkdir()
    xds, admin, join = free_port(), free_port(), free_port()
    server = Child(
        [sys.executable, "-m", "dgw.cli", "server", "--config-dir", str(shards), "--data-dir", str(data),
         "--xds", f"127.0.0.1:{xds}", "--admin", f"127.0.0.1:{admin}", "--join", f"127.0.0.1:{join}"],
        log=tmp_path / "server.log",
    )  # fmt: skip
    proxy: Child | None = None
    try:
        wait_until(lambda: server.serving(admin, "dgw server"), 30, what="the server's admin port")
        env = {"DGW_SERVER": f"127.0.0.1:{admin}", "DGW_TOKEN": (data / "admin.token").read_text().strip()}
        made = subprocess.run(
            [DGW, "token", "create", "--role", "client", "--identity", "demo-app", "--name", "demo-join",
             "--one-time", "--ttl", "10m"], env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert made.returncode == 0, made.stderr
        token = made.stdout.strip()
        listen = free_port()
        proxy = Child(
            [sys.executable, "-m", "dgw.cli", "client-proxy", "--shard", "demo", "--listener", "secure_grpc",
             "--listen", f"127.0.0.1:{listen}", "--xds", f"127.0.0.1:{xds}", "--join", token,
             "--join-server", f"127.0.0.1:{join}", "--ca", str(data / "ca" / "ca.crt"), "--node-id", "app-1"],
            log=tmp_path / "proxy.log",
        )  # fmt: skip
        wait_until(lambda: proxy.serving(listen, "dgw client-proxy"), 60, what="the client proxy listening")
        log = server.log()
        assert "event=certificate_signed shard=demo node=app-1 identity=spiffe://dgw.local/demo/app" in log
        wait_until(lambda: "event=connect shard=_discovery node=app-1" in server.log(), 30,
                   what="the proxy's Envoy on the server's ADS, over mTLS as demo-app")  # fmt: skip
        assert token not in server.log() and token not in proxy.log()
    finally:
        if proxy is not None:
            proxy.stop()
        server.stop()
