"""One etcd member for the whole test run (started on first use, by the ``etcd``
fixture), and a store URL with a prefix of its own per test: tests share the member
but never each other's keys."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from testkit.etcd import EtcdCluster
from testkit.wait import wait_until


def start_cluster(directory: Path, size: int = 1) -> EtcdCluster:
    """Members started and answering (a member listens once it has joined its cluster)."""
    cluster = EtcdCluster(directory, size)
    cluster.start()
    try:
        for m in cluster.members:
            assert m.child is not None
            wait_until(lambda m=m: m.child.serving(m.client_port, f"etcd {m.name}"), 60,
                       what=f"etcd {m.name} to listen on {m.endpoint}")  # fmt: skip
    except BaseException:
        cluster.stop()
        raise
    return cluster


@pytest.fixture(scope="session")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    cluster = start_cluster(tmp_path_factory.mktemp("etcd"))
    try:
        yield cluster
    finally:
        cluster.stop()


def store_url(cluster: EtcdCluster) -> str:
    """The cluster with a fresh key prefix: an empty store of one's own."""
    return f"{cluster.url}/t-{uuid.uuid4().hex[:12]}"
