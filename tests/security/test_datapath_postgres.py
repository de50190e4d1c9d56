"""Secure RDS end to end: ``psql`` → ``dgw client-proxy`` → gateway Envoy (mTLS, network
RBAC) → PostgreSQL on 127.0.0.1:5432, all real.

The gateway's certificate comes over SDS from a LocalSds the test runs, issued by a
test CA; the application's from `dgw ca issue`'s code, handed to `dgw client-proxy`.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from testkit.ports import free_port, port_open
from testkit.wait import wait_until

from .datapath import SecureStack, envoy_log, refused_without_certificate

pytestmark = [pytest.mark.envoy, pytest.mark.postgres, pytest.mark.slow]

SHARD = "rds"
ADDRESS = "rds.dgw"


@pytest.fixture
def secure(tmp_path):
    if not port_open(5432):
        pytest.fail("PostgreSQL is not running on 127.0.0.1:5432 (this test needs it)")
    if shutil.which("psql") is None:
        pytest.fail("psql (the PostgreSQL client) is not installed")
    stack = SecureStack(tmp_path)
    yield stack
    stack.close()


def rds_shard(port: int) -> dict:
    return {
        "proxy_config": {"public_listeners": {
            "secure_postgres": {"mode": "tcp", "path": str(port), "tls_creds": "metatron", "authz": "gandalf"},
        }},
        "container_dals": {},
        "network_dals": {"rds": {"listeners": {"secure_postgres": "postgresql://127.0.0.1:5432"}, "mode": "static"}},
        "registrations": [{"address": ADDRESS}],
        "deploy_desires": {"consumers": [
            {"type": "account-app", "value": "prod-api", "group": "read-write"},
            {"type": "account-app", "value": "studio_prod-ui", "group": "read-only"},
        ]},
    }  # fmt: skip


def psql(port: int, sql: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PGCONNECT_TIMEOUT": "5", "PGSSLMODE": "disable"}
    return subprocess.run(
        ["psql", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-d", "test", "-X", "-At", "-c", sql],
        capture_output=True, text=True, timeout=15, env=env,
    )  # fmt: skip


def test_psql_through_client_proxy_and_gateway(secure: SecureStack):
    gateway_port = free_port()
    secure.server.write_shard(SHARD, rds_shard(gateway_port))
    envoy = secure.gateway(SHARD)
    wait_until(lambda: port_open(gateway_port), 10, what="the gateway's secure_postgres listener")
    secure.register(SHARD, "gw-1", ADDRESS, [])

    writer = free_port()
    secure.client_proxy(SHARD, "secure_postgres", ADDRESS, writer, "prod-api")
    assert wait_until(lambda: psql(writer, "select 1").stdout.strip() == "1", 15,
                      what="psql select 1 through client proxy and gateway")  # fmt: skip
    # A read-only consumer may connect too: PostgreSQL does its own statement checks.
    reader = free_port()
    secure.client_proxy(SHARD, "secure_postgres", ADDRESS, reader, "studio_prod-ui")
    assert wait_until(lambda: psql(reader, "select 2").stdout.strip() == "2", 15, what="read-only consumer")
    allowed = envoy.stat("secure_postgres.rbac.allowed")
    assert allowed >= 2

    # An identity of the same CA that is not among the consumers: refused by RBAC.
    stranger = free_port()
    secure.client_proxy(SHARD, "secure_postgres", ADDRESS, stranger, "prod-intruder")
    answers = []

    def refused_by_the_gateway() -> bool:
        answers.append(psql(stranger, "select 1").stdout.strip())
        return envoy.stat("secure_postgres.rbac.denied") >= 1

    # Until the proxy has the gateway from EDS, psql fails for want of a host; the
    # gateway's denial counter shows the attempt reached it and RBAC refused it.
    wait_until(refused_by_the_gateway, 15, what="the gateway's RBAC to refuse an unknown identity")
    assert "1" not in answers
    # The refused connection is logged with the caller's identity.
    wait_until(lambda: "dgw_denied listener=secure_postgres peer=spiffe://dgw.local/prod/intruder connection="
               "rbac_access_denied" in envoy_log(envoy), 15, what="the denied connection in Envoy's log")  # fmt: skip

    # No client certificate at all: refused at the TLS handshake, nothing reaches RBAC.
    denied_before = envoy.stat("secure_postgres.rbac.denied")
    assert refused_without_certificate(gateway_port, secure.ca.client_context(None))
    assert envoy.stat("secure_postgres.rbac.denied") == denied_before
    assert envoy.stat(f"listener.127.0.0.1_{gateway_port}.ssl.fail_verify_no_cert") >= 1
