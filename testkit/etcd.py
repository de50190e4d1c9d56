"""Real etcd members for tests and benchmarks: Debian's ``etcd-server`` binary, a
cluster of one or three on loopback ports (or on the addresses of network-namespace
hosts, with a command prefix such as ``ip netns exec NS``), each with its own data dir,
stopped by PID.

The limits raised from etcd's defaults are the ones the config store needs: a batch
edit of 100 shards is one transaction of about 300 operations (``--max-txn-ops``,
default 128), and a shard file may be 1 MiB (``--max-request-bytes``, default 1.5 MiB).
deploy/ha/ starts its members with the same flags (``ETCD_FLAGS``).
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from testkit.ports import free_port
from testkit.procs import Child

ETCD_FLAGS = ("--max-txn-ops", "4096", "--max-request-bytes", "10485760",
              "--logger", "zap", "--log-level", "warn")  # fmt: skip
INSTALL_HINT = "etcd is not installed: apt-get update && apt-get install -y etcd-server (./dev test does)"


def etcd_binary() -> str:
    found = shutil.which("etcd")
    if found is None:
        raise RuntimeError(INSTALL_HINT)
    return found


@dataclass
class Member:
    name: str
    host: str
    client_port: int
    peer_port: int
    data_dir: Path
    prefix: Sequence[str] = ()  # e.g. ("ip", "netns", "exec", "ns1")
    child: Child | None = field(default=None, repr=False)

    @property
    def client_url(self) -> str:
        return f"http://{self.host}:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://{self.host}:{self.peer_port}"

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.client_port}"

    def start(self, initial_cluster: str, token: str, state: str = "new") -> None:
        argv = [*self.prefix, etcd_binary(), "--name", self.name, "--data-dir", str(self.data_dir),
                "--listen-client-urls", self.client_url, "--advertise-client-urls", self.client_url,
                "--listen-peer-urls", self.peer_url, "--initial-advertise-peer-urls", self.peer_url,
                "--initial-cluster", initial_cluster, "--initial-cluster-token", token,
                "--initial-cluster-state", state, *ETCD_FLAGS]  # fmt: skip
        self.child = Child(argv, self.data_dir.parent / f"{self.name}.log")

    def alive(self) -> bool:
        return self.child is not None and self.child.alive()

    def kill(self) -> None:
        if self.child is not None:
            self.child.kill()

    def stop(self) -> None:
        if self.child is not None:
            self.child.stop()


class EtcdCluster:
    """``size`` members; ``hosts`` (one address per member, default 127.0.0.1) and
    ``prefixes`` (a command prefix per member) place them on namespace hosts."""

    def __init__(self, directory: Path, size: int = 1, *, hosts: Sequence[str] | None = None,
                 prefixes: Sequence[Sequence[str]] | None = None) -> None:  # fmt: skip
        self.directory = directory
        self.token = f"dgw-test-{uuid.uuid4().hex[:8]}"
        hosts = hosts or ["127.0.0.1"] * size
        self.members = [
            Member(f"m{i}", hosts[i], free_port(), free_port(), directory / f"m{i}",
                   prefixes[i] if prefixes else ())
            for i in range(size)
        ]

    @property
    def endpoints(self) -> list[str]:
        return [m.endpoint for m in self.members]

    @property
    def url(self) -> str:
        """The ``--store`` URL for ``dgw server``."""
        return "etcd://" + ",".join(self.endpoints)

    def start(self) -> EtcdCluster:
        initial = ",".join(f"{m.name}={m.peer_url}" for m in self.members)
        for member in self.members:
            member.start(initial, self.token)
        return self

    def restart(self, member: Member) -> None:
        """Start a stopped member again on its data dir (it rejoins the cluster)."""
        initial = ",".join(f"{m.name}={m.peer_url}" for m in self.members)
        member.start(initial, self.token, state="existing")

    def stop(self) -> None:
        for member in self.members:
            member.stop()
