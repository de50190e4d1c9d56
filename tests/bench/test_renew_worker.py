"""The renewal load of ``xds-fleet --renew-rate`` against a real secure server: each
renewal gets a new certificate for the host's own identity, the next renewal of that
host presents it, over new connections and over connections opened beforehand; and a
fleet node with its own certificate syncs over mTLS."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cryptography import x509

from bench.fleet_worker import Fleet, WorkerSpec
from bench.renew_worker import Identity, Renewer, RenewSpec
from testkit.wait import eventually
from tests.security.conftest import node_cert, settings
from tests.support.server import running_server
from xds_server.resources import CLUSTER
from xds_server.server import XdsServer

SHARD = "a"  # a shard of the secure server's config dir (tests/security/conftest.py)


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[XdsServer]:
    async with running_server(settings(tmp_path)) as server:
        yield server


def _identities(server: XdsServer, count: int) -> list[Identity]:
    certs = [node_cert(server, SHARD, f"n{i}") for i in range(count)]
    return [Identity(SHARD, f"n{i}", c.key_pem, c.chain_pem) for i, c in enumerate(certs)]


def _serial(chain_pem: bytes) -> int:
    return x509.load_pem_x509_certificate(chain_pem).serial_number


async def test_each_renewal_replaces_the_hosts_certificate(server: XdsServer) -> None:
    assert server.ca is not None
    hosts = _identities(server, 3)
    renewer = Renewer(RenewSpec(f"127.0.0.1:{server.xds_port}", server.ca.bundle_pem, hosts, concurrency=2))
    fresh = await renewer.storm(count=6, timeout=30)  # each host twice, new connections
    assert fresh["renewed"] == 6 and fresh["error_count"] == 0, fresh
    assert [_serial(h.chain_pem) for h in renewer.current] != [_serial(h.chain_pem) for h in hosts]
    for host in renewer.current:
        leaf = x509.load_pem_x509_certificate(host.chain_pem)
        uri = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert uri.get_values_for_type(x509.UniformResourceIdentifier) == [f"spiffe://dgw.local/gateway/{SHARD}"]
        assert leaf.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == host.node_id

    assert await renewer.connect(count=3, timeout=30) == {"connected": 3}
    held = await renewer.storm(count=3, timeout=30)  # over the open connections
    assert held["renewed"] == 3 and held["error_count"] == 0, held
    assert await renewer.disconnect() == {"closed": 3}


async def test_paced_renewals_run_until_finished(server: XdsServer) -> None:
    assert server.ca is not None
    renewer = Renewer(RenewSpec(f"127.0.0.1:{server.xds_port}", server.ca.bundle_pem, _identities(server, 2)))
    renewer.start(rate=50, prepare=5)
    await eventually(lambda: renewer.renewed >= 3, timeout=30)
    answer = await renewer.finish()
    assert answer["renewed"] >= 3 and answer["error_count"] == 0, answer


async def test_a_fleet_node_syncs_over_mtls_with_its_own_certificate(server: XdsServer) -> None:
    assert server.ca is not None
    cert = node_cert(server, SHARD, "node-1")
    spec = WorkerSpec(f"127.0.0.1:{server.xds_port}", [("node-1", SHARD)],
                      tls={"node-1": (cert.key_pem, cert.chain_pem)}, bundle_pem=server.ca.bundle_pem)  # fmt: skip
    fleet = Fleet(spec)
    want = server.cache.shard_versions(SHARD)[CLUSTER]
    try:
        answer = await fleet.connect({SHARD: {CLUSTER: want}}, timeout=30)
        assert answer["synced"] == 1 and answer["failed_count"] == 0, answer
    finally:
        await fleet.close()
