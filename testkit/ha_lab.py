"""A highly available Data Gateway on hosts of its own (``testkit.netns``): three etcd
members, three ``dgw server`` replicas and gateway hosts (``dgw sidecar`` with its
Envoy and a sample DAL, process runtime), with the secure defaults (mTLS, each host
joined with a one-time token) — every process on its own host, every link cuttable.
The HA tests (``tests/ha``) and ``deploy/ha/lab.py`` build it.

Hosts: ``e1..e3`` on the control network, ``r1..r3`` on both networks, ``g1``, ``g2``
on the edge network; the machine itself is a client on the edge network.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from common.files import write_private
from testkit.etcd import EtcdCluster
from testkit.netns import Host, Lab
from testkit.procs import Child
from testkit.wait import wait_until
from xds_server.security.server_tls import load_or_init_ca

SHARD = "hademo"
PUBLIC_PORT = 8080
XDS, ADMIN, JOIN = 18000, 18001, 18002
LEASE_TTL_S = 6


def shard_text(edit: int = 0) -> str:
    """The demo shard; each ``edit`` moves a second, network DAL's listener (new
    Envoy resources, nothing restarted on the hosts)."""
    py = sys.executable
    probe = "http://127.0.0.1:$${DGW_LISTENER_API_PORT}/health"
    config: dict[str, Any] = {
        "proxy_config": {"public_listeners": {
            "api": {"mode": "http", "path": PUBLIC_PORT},
            "ext": {"mode": "http", "path": 8090},
        }},
        "container_dals": {"main": {
            "container_cmd": [py, "-m", "dals.sample"],
            "container_listeners": {"api": 8080},
            "env": {"DGW_DAL_NAME": "main"},
            "healthcheck": {"test": ["CMD-SHELL", f"{py} -m dals.sample.probe {probe}"],
                            "interval": "500ms", "timeout": "2s", "retries": 2},
        }},
        "network_dals": {"ext": {"listeners": {"ext": f"http://127.0.0.1:{9000 + edit}"}}},
        "registrations": [{"address": f"{SHARD}.dgwsample", "mode": "nflx-discovery"}],
    }  # fmt: skip
    return yaml.safe_dump(config, sort_keys=False)


@dataclass
class Replica:
    name: str
    host: Host
    workdir: Path
    store: str
    ca_dir: Path
    child: Child | None = None
    runs: int = 0

    @property
    def address(self) -> str:
        return self.host.address("edge")

    @property
    def xds(self) -> str:
        return f"{self.address}:{XDS}"

    def start(self) -> None:
        self.runs += 1
        config_dir = self.workdir / "shards"
        config_dir.mkdir(parents=True, exist_ok=True)
        self.child = Child(
            [*self.host.prefix, sys.executable, "-m", "dgw.cli", "server", "--store", self.store,
             "--replica-id", self.name, "--config-dir", str(config_dir), "--data-dir", str(self.workdir / "data"),
             "--ca-dir", str(self.ca_dir), "--xds", self.xds, "--admin", f"{self.address}:{ADMIN}",
             "--join", f"{self.address}:{JOIN}", "--public-address", "0.0.0.0", "--server-name", self.address,
             "--lease-ttl", f"{LEASE_TTL_S}s"],
            self.workdir / f"server-{self.runs}.log",
        )  # fmt: skip

    def log(self) -> str:
        return "\n".join((self.workdir / f"server-{i}.log").read_text(errors="replace")
                         for i in range(1, self.runs + 1))  # fmt: skip

    def serving(self) -> bool:
        assert self.child is not None
        self.child.check(f"replica {self.name}")
        return _answers(f"http://{self.address}:{ADMIN}/healthz")

    def kill(self) -> None:
        if self.child is not None:
            self.child.kill()

    def stop(self) -> None:
        if self.child is not None:
            self.child.stop(timeout=10)


@dataclass
class Gateway:
    name: str
    host: Host
    workdir: Path
    servers: str
    ca_cert: Path
    child: Child | None = None
    runs: int = 0

    @property
    def url(self) -> str:
        return f"http://{self.host.address('edge')}:{PUBLIC_PORT}/"

    def start(self, join_token: str | None) -> None:
        self.runs += 1
        argv = [*self.host.prefix, sys.executable, "-m", "dgw.cli", "sidecar", "--server", self.servers,
                "--shard", SHARD, "--node-id", self.name, "--runtime", "process",
                "--state-dir", str(self.workdir / "state"), "--host-address", self.host.address("edge"),
                "--trust-bundle", str(self.ca_cert), "--stop-dals-on-exit", "--resync", "1"]  # fmt: skip
        if join_token is not None:
            token_file = self.workdir / "join.token"
            write_private(token_file, join_token.encode())
            argv += ["--join-token-file", str(token_file)]
        self.child = Child(argv, self.workdir / f"sidecar-{self.runs}.log")

    def log(self) -> str:
        return "\n".join((self.workdir / f"sidecar-{i}.log").read_text(errors="replace")
                         for i in range(1, self.runs + 1))  # fmt: skip

    def answers(self) -> bool:
        assert self.child is not None
        self.child.check(f"gateway {self.name}'s sidecar")
        return _answers(self.url)

    def kill(self) -> None:
        """kill -9 of the sidecar, and of what it ran (Envoy, the DAL): a dead host."""
        if self.child is not None:
            self.child.kill()
        for pid in _pids_in(self.host.namespace):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def stop(self) -> None:
        if self.child is not None:
            self.child.stop(timeout=20)


@dataclass
class Cluster:
    lab: Lab
    workdir: Path
    etcd: EtcdCluster
    etcd_hosts: list[Host]
    replicas: dict[str, Replica] = field(default_factory=dict)
    gateways: dict[str, Gateway] = field(default_factory=dict)
    token: str = ""

    @classmethod
    def start(cls, workdir: Path, gateways: int = 2) -> Cluster:
        lab = Lab()
        try:
            etcd_hosts = [lab.add_host(f"e{i}", ("ctl",)) for i in (1, 2, 3)]
            etcd = EtcdCluster(workdir / "etcd", 3, hosts=[h.address("ctl") for h in etcd_hosts],
                               prefixes=[h.prefix for h in etcd_hosts])  # fmt: skip
            for m in etcd.members:
                m.client_port, m.peer_port = 2379, 2380
            cluster = cls(lab, workdir, etcd, etcd_hosts)
            cluster._start(gateways)
            return cluster
        except BaseException:
            lab.close()
            raise

    def _start(self, gateways: int) -> None:
        self.etcd.start()
        ca_dir = self.workdir / "ca"
        load_or_init_ca(ca_dir)  # one CA, given to every replica (docs/ha.md)
        store = "etcd://" + ",".join(f"{h.address('ctl')}:2379" for h in self.etcd_hosts) + "/hatest"
        for i in (1, 2, 3):
            name = f"r{i}"
            self.replicas[name] = Replica(name, self.lab.add_host(name, ("ctl", "edge")), self.workdir / name,
                                          store, ca_dir)  # fmt: skip
        # The first replica makes the admin token (tokens live in etcd: it works on all).
        first = self.replicas["r1"]
        first.start()
        wait_until(first.serving, 90, what="replica r1 to serve (etcd cluster up, session taken)")
        self.token = (first.workdir / "data" / "admin.token").read_text().strip()
        for r in list(self.replicas.values())[1:]:
            r.start()
        for r in self.replicas.values():
            wait_until(r.serving, 60, what=f"replica {r.name} to serve")
        status, body = self.api("r1", "PUT", f"/v1/shards/{SHARD}", {"yaml": shard_text()}, if_match=0)
        assert status == 200, body
        servers = ",".join(r.xds for r in self.replicas.values())
        for name in (f"g{i}" for i in range(1, gateways + 1)):
            gateway = Gateway(name, self.lab.add_host(name, ("edge",)), self.workdir / name, servers,
                              ca_dir / "ca.crt")  # fmt: skip
            self.gateways[name] = gateway
            gateway.start(self.join_token())
        for g in self.gateways.values():
            wait_until(g.answers, 90, what=f"gateway {g.name} to answer {g.url}")

    def join_token(self) -> str:
        status, body = self.api("r1", "POST", "/v1/tokens", {"role": "node", "shard": SHARD, "name": "ha-join",
                                                             "one_time": True, "ttl_s": 600})  # fmt: skip
        assert status in (200, 201), body
        return str(body["token"])

    def api(self, replica: str, method: str, path: str, body: dict[str, Any] | None = None,
            if_match: int | None = None, timeout: float = 15) -> tuple[int, dict[str, Any]]:  # fmt: skip
        """An admin API call to one replica; an HTTP error status is returned, not raised."""
        headers = {"content-type": "application/json", "Authorization": f"Bearer {self.token}"}
        if if_match is not None:
            headers["If-Match"] = f'"{if_match}"'
        request = urllib.request.Request(
            f"http://{self.replicas[replica].address}:{ADMIN}{path}",
            data=None if body is None else json.dumps(body).encode(), headers=headers, method=method,
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as r:
                return r.status, json.loads(r.read() or b"{}")
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"{}")

    def alive(self) -> list[str]:
        return [n for n, r in self.replicas.items() if r.child is not None and r.child.alive()]

    def version(self, replica: str) -> int:
        status, body = self.api(replica, "GET", f"/v1/shards/{SHARD}")
        assert status == 200, body
        return int(body["version"])

    def connected(self, replicas: list[str] | None = None) -> dict[str, str]:
        """node → the replica its Envoy's ADS stream is on (among ``replicas``)."""
        where: dict[str, str] = {}
        for name in replicas or self.alive():
            status, body = self.api(name, "GET", f"/v1/status?shard={SHARD}", timeout=5)
            if status != 200:
                continue
            for row in body["nodes"]:
                where[row["node"]] = name
        return where

    def synced(self, version: int, replicas: list[str] | None = None) -> bool:
        """Every gateway's Envoy holds the shard's stored ``version``, as the replica it
        is connected to sees it, and that replica serves that version."""
        nodes: set[str] = set()
        for name in replicas or self.alive():
            status, body = self.api(name, "GET", f"/v1/status?shard={SHARD}", timeout=5)
            if status != 200 or body["shards"].get(SHARD, {}).get("version") != version:
                return False
            for row in body["nodes"]:
                if not row["in_sync"]:
                    return False
                nodes.add(row["node"])
        return nodes == set(self.gateways)

    def edit(self, replica: str, n: int) -> tuple[int, dict[str, Any]]:
        """Edit ``n``: from the shard's current version, through ``replica``."""
        return self.api(replica, "PUT", f"/v1/shards/{SHARD}", {"yaml": shard_text(n)},
                        if_match=self.version(replica))  # fmt: skip

    def discovery(self, replica: str) -> set[str]:
        status, body = self.api(replica, "GET", f"/v1/discovery/{SHARD}.dgwsample")
        assert status == 200, body
        return {i["node_id"] for i in body["instances"]}

    def eds_nodes(self, replica: str) -> set[str]:
        """Nodes whose report (their endpoints) the replica holds."""
        status, body = self.api(replica, "GET", f"/v1/shards/{SHARD}")
        assert status == 200, body
        return set(body.get("nodes", []))

    def logs(self) -> str:
        parts = [f"--- replica {n} ---\n{r.log()[-4000:]}" for n, r in self.replicas.items()]
        parts += [f"--- gateway {n} ---\n{g.log()[-3000:]}" for n, g in self.gateways.items()]
        return "\n".join(parts)

    def close(self) -> None:
        try:
            for g in self.gateways.values():
                g.stop()
            for r in self.replicas.values():
                r.stop()
            self.etcd.stop()
        finally:
            self.lab.close()


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=3) as r:
            return bool(r.status == 200)
    except (OSError, urllib.error.URLError):
        return False


def _pids_in(namespace: str) -> list[int]:
    from testkit.netns import ip

    return [int(p) for p in ip("netns", "pids", namespace, check=False).stdout.split()]
