"""The acceptance of a highly available control plane (issue #23), on hosts of their
own: etcd members, replicas and gateways each in a network namespace."""

from __future__ import annotations

import pytest

from testkit.wait import wait_until
from tests.ha.cluster import Cluster
from tests.ha.traffic import Traffic

pytestmark = [pytest.mark.etcd, pytest.mark.envoy, pytest.mark.slow]


def test_an_edit_through_one_replica_reaches_every_envoy(cluster: Cluster) -> None:
    status, body = cluster.edit("r2", 1)
    assert status == 200, body
    wait_until(lambda: cluster.synced(body["version"]), 30,
               what=f"every Envoy SYNCED at version {body['version']}\n{cluster.logs()}")  # fmt: skip
