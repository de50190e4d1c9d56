"""A whole gateway on loopback: a ``dgw server`` child, sample DALs, real Envoys."""

from __future__ import annotations

import http.client
import json
from pathlib import Path

import grpc
import pytest

from envoy_proxy import BlockingEnvoy
from testkit.ports import free_port
from tests.support.envoy import start_envoy
from tests.support.gateway import XdsServerProcess
from tests.support.procs import Child, sample_dal


class Stack:
    def __init__(self, workdir: Path, delta: bool):
        self.workdir = workdir
        self.delta = delta
        self.server = XdsServerProcess(workdir).start()
        self.dals: dict[str, Child] = {}
        self.envoys: list[BlockingEnvoy] = []

    def dal(self, name: str, ports: dict[str, int], **env: str) -> Child:
        child = sample_dal(name, ports, self.workdir / f"dal-{name}.log", **env)
        self.dals[name] = child
        return child

    def envoy(self, shard: str, node_id: str = "node-1", client: tuple[str, int] | None = None) -> BlockingEnvoy:
        envoy = start_envoy(shard, node_id, self.server.xds_port, self.workdir, self.delta, client)
        self.envoys.append(envoy)
        return envoy

    def close(self) -> None:
        for envoy in self.envoys:
            envoy.stop()
        for dal in self.dals.values():
            dal.stop()
        self.server.stop()


@pytest.fixture(params=["sotw", "delta"])
def stack(request, tmp_path):
    s = Stack(tmp_path, delta=request.param == "delta")
    yield s
    s.close()


def http_get(port: int, path: str = "/", conn: http.client.HTTPConnection | None = None) -> tuple[int, dict]:
    c = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    c.request("GET", path)
    r = c.getresponse()
    body = r.read()
    if conn is None:
        c.close()
    return r.status, (json.loads(body) if body.startswith(b"{") else {"raw": body.decode()})


def answered_by(port: int, path: str = "/") -> str | None:
    """The DAL that answered a GET through the gateway (None: no 200 answer)."""
    try:
        status, body = http_get(port, path)
    except OSError:
        return None
    return body.get("dal") if status == 200 else None


def healthy(dal: str, listener: str, port: int) -> dict:
    """An endpoint as a sidecar reports a healthy one."""
    return {"dal": dal, "listener": listener, "address": "127.0.0.1", "port": port, "health": "HEALTHY"}


def grpc_echo(port: int, payload: bytes = b"hi") -> bytes:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        return channel.unary_unary("/dgw.sample.v1.Echo/Echo")(payload, timeout=5)


def dal_requests(port: int) -> int:
    return http_get(port, "/stats")[1]["requests"]


__all__ = ["Stack", "answered_by", "dal_requests", "free_port", "grpc_echo", "healthy", "http_get"]
