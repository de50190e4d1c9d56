"""The HA tests share one cluster of hosts per module (it takes ~20 s to build): each
test leaves it as it found it — every replica up, every link healed, both gateways
serving — so the next one starts from a whole cluster."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from testkit.etcd import etcd_binary
from testkit.ha_lab import Cluster
from testkit.netns import available


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    etcd_binary()  # a clear error if etcd is not installed
    why = available()
    if why is not None:
        pytest.fail(f"the HA tests build hosts with network namespaces: {why}")
    workdir: Path = tmp_path_factory.mktemp("ha")
    made = Cluster.start(workdir)
    try:
        yield made
    finally:
        made.close()
