"""A gateway host under test: a real ``dgw server``, a real ``dgw sidecar`` child
(with its Envoy) and the DALs it runs, with the helpers the integration tests share."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import sys
import urllib.error
import uuid
from datetime import datetime
from pathlib import Path

from tests.support.gateway import XdsServerProcess
from tests.support.procs import Child, free_port, wait_for

IMAGE = "dgw-sample-dal:test"
NODE = "n1"


def docker_client():
    import docker

    client = docker.from_env(timeout=10)
    client.ping()
    return client


class Host:
    def __init__(self, workdir: Path, runtime: str):
        self.workdir = workdir
        self.runtime = runtime
        self.shard = f"t{uuid.uuid4().hex[:8]}"
        self.server = XdsServerProcess(workdir).start()
        self.public = {"alpha": free_port(), "beta": free_port(), "gamma": free_port()}
        self.state_dir = workdir / "state"
        self.sidecar: Child | None = None
        self.runs = 0
        self.docker = docker_client() if runtime == "docker" else None

    # --- config --------------------------------------------------------------------

    def dal(self, listener: str, **extra) -> dict:
        probe = f"http://127.0.0.1:$${{DGW_LISTENER_{listener.upper()}_PORT}}/health"
        if self.runtime == "docker":
            d = {"image": IMAGE,
                 "healthcheck": {"test": ["CMD-SHELL", f"python3 -m dals.sample.probe {probe}"],
                                 "interval": "500ms", "timeout": "2s", "retries": 2}}
        else:
            py = sys.executable
            d = {"container_cmd": [py, "-m", "dals.sample"],
                 "healthcheck": {"test": ["CMD-SHELL", f"{py} -m dals.sample.probe {probe}"],
                                 "interval": "500ms", "timeout": "2s", "retries": 2}}
        d["container_listeners"] = {listener: 8080}  # both say 8080, like the seed's 8980
        d.update(extra)
        return d

    def config(self) -> dict:
        return {
            "proxy_config": {"public_listeners": {
                "alpha": {"mode": "http", "path": self.public["alpha"]},
                "beta": {"mode": "http", "path": self.public["beta"]},
            }},
            "container_dals": {"cql": self.dal("alpha"),
                               "thrift": self.dal("beta", env={"STORAGE_ENGINE": "thrift"})},
            "registrations": [{"address": f"{self.shard}.dgwkv"}],
        }

    def write(self, config: dict) -> None:
        self.server.write_shard(self.shard, config)

    # --- the sidecar ---------------------------------------------------------------

    def start_sidecar(self, *extra: str) -> Child:
        self.runs += 1
        self.sidecar = Child(
            [sys.executable, "-m", "dgw.cli", "--log-level", "DEBUG", "sidecar",
             "--server", f"127.0.0.1:{self.server.xds_port}", "--shard", self.shard,
             "--node-id", NODE, "--runtime", self.runtime, "--state-dir", str(self.state_dir),
             "--resync", "1", "--insecure", *extra],
            log=self.workdir / f"sidecar-{self.runs}.log",
        )
        return self.sidecar

    def stop_sidecar(self) -> None:
        if self.sidecar is not None:
            self.sidecar.stop(timeout=15)

    def log(self) -> str:
        return "\n".join(
            (self.workdir / f"sidecar-{i}.log").read_text(errors="replace")
            for i in range(1, self.runs + 1)
        )

    def events(self, name: str, **match: str) -> list[dict]:
        """Structured sidecar log lines of event ``name`` whose fields match."""
        out = []
        for line in self.log().splitlines():
            if f"event={name} " not in line:
                continue
            fields = dict(re.findall(r'(\w[\w.]*)=("(?:[^"\\]|\\.)*"|\S+)', line))
            fields = {k: json.loads(v) if v.startswith('"') else v for k, v in fields.items()}
            if all(fields.get(k) == v for k, v in match.items()):
                fields["at"] = _stamp(line)
                out.append(fields)
        return out

    # --- what the server sees ------------------------------------------------------

    def report(self) -> dict:
        try:
            shard = self.server.shard(self.shard)
        except urllib.error.HTTPError as e:
            if e.code == 404:  # the server has not loaded the shard (yet)
                return {}
            raise
        return shard.get("reports", {}).get(NODE, {}).get("report", {})

    def health(self, dal: str) -> str | None:
        for e in self.report().get("endpoints", []):
            if e["dal"] == dal:
                return e.get("health", "HEALTH_UNKNOWN")
        return None

    def endpoint(self, dal: str) -> dict:
        return next(e for e in self.report().get("endpoints", []) if e["dal"] == dal)

    def registered(self) -> bool:
        found = self.server.get(f"/v1/discovery/{self.shard}.dgwkv")["instances"]
        return any(i["node_id"] == NODE for i in found)

    def wait_healthy(self, *dals: str, timeout: float = 30) -> None:
        until(lambda: all(self.health(d) == "HEALTHY" for d in dals), timeout,
              what=lambda: f"{dals} healthy; report={self.report()}\n{self.log()[-3000:]}")

    # --- traffic through Envoy -----------------------------------------------------

    def get(self, listener: str, path: str = "/") -> tuple[int, dict]:
        c = http.client.HTTPConnection("127.0.0.1", self.public[listener], timeout=3)
        try:
            c.request("GET", path)
            r = c.getresponse()
            body = r.read()
        finally:
            c.close()
        return r.status, (json.loads(body) if body.startswith(b"{") else {"raw": body.decode()})

    def answered_by(self, listener: str) -> str | None:
        try:
            status, body = self.get(listener)
        except OSError:
            return None
        return body.get("dal") if status == 200 else None

    # --- the DAL instances ---------------------------------------------------------

    def instances(self) -> dict[str, str]:
        """DAL name → the id of its instance (container id or pid)."""
        if self.docker is not None:
            return {c.labels["dgw.dal"]: c.id for c in self._containers()}
        return {r["dal"]: str(r["pid"]) for r in self._records() if not r.get("exited")}

    def kill_dal(self, dal: str) -> None:
        if self.docker is not None:
            self.docker.containers.get(self.instances()[dal]).kill()
        else:
            os.kill(int(self.instances()[dal]), signal.SIGKILL)

    def envoy_pid(self) -> int:
        return int(self.events("envoy_started")[-1]["pid"])

    def _containers(self):
        return self.docker.containers.list(
            all=True, filters={"label": ["dgw.managed-by=dgw-sidecar", f"dgw.shard={self.shard}"]}
        )

    def _records(self) -> list[dict]:
        path = self.state_dir / f"{self.shard}-{NODE}" / "processes.json"
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            return []

    def close(self) -> None:
        self.stop_sidecar()
        if self.docker is not None:
            for c in self._containers():
                c.remove(force=True)
            self.docker.close()
        for r in self._records():
            try:
                os.killpg(r["pid"], signal.SIGKILL)  # groups this test's agent started
            except ProcessLookupError:
                pass
        self.server.stop()


def _stamp(line: str) -> float | None:
    m = re.match(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3})", line)
    if not m:
        return None
    return datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S").timestamp() + int(m.group(2)) / 1000


def until(check, timeout: float, what=""):
    """Poll ``check`` until truthy; ``what`` (a string, or a callable for a message
    built at the deadline) says what was awaited."""
    try:
        return wait_for(check, timeout, interval=0.01, what="" if callable(what) else what)
    except AssertionError as e:
        if callable(what):
            raise AssertionError(f"{e}\n{what()}") from None
        raise

