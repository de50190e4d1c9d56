"""Envoy's stats reach the server through the sidecar: ``GET /v1/stats/{shard}`` and
``dgw stats`` show each DAL listener's requests and latency as Envoy measured them."""

from __future__ import annotations

import pytest

from tests.cli.run import dgw

from .host import Host, until

pytestmark = pytest.mark.envoy


@pytest.fixture
def host(tmp_path):
    h = Host(tmp_path, "process")
    yield h
    h.close()


def test_a_slow_dal_shows_its_latency_and_a_fast_one_its_traffic(host: Host):
    config = host.config()
    config["container_dals"]["cql"]["env"] = {"SAMPLE_DELAY_MS": "30"}
    host.write(config)
    host.start_sidecar("--stats-every", "0.3")
    host.wait_healthy("cql", "thrift", timeout=60)
    path = f"/v1/stats/{host.shard}?window=60s"
    # Two samples make a window: the traffic below lands after the first.
    until(lambda: host.server.get(path)["nodes"] == 1, 30, what="the node's first stats")
    for _ in range(20):
        assert host.answered_by("alpha") == "cql"
    for _ in range(60):
        assert host.answered_by("beta") == "thrift"

    def counted() -> dict | None:
        data = host.server.get(path)
        cql, thrift = data["clusters"]["dal.cql.alpha"], data["clusters"]["dal.thrift.beta"]
        done = cql["requests"] >= 20 and thrift["requests"] >= 60 and cql["p99_ms"] and thrift["p99_ms"]
        return data if done else None

    data = until(counted, 30, what=lambda: f"the traffic in /v1/stats: {host.server.get(path)}")
    cql, thrift = data["clusters"]["dal.cql.alpha"], data["clusters"]["dal.thrift.beta"]
    assert (cql["dal"], cql["listener"], cql["errors"]) == ("cql", "alpha", 0)
    assert cql["counters"]["upstream_rq_2xx"] >= 20
    assert 25 <= cql["p99_ms"] <= 200 and thrift["p99_ms"] < 25, (cql, thrift)
    assert data["listeners"]["beta"]["requests"] >= 60
    assert not any(name.startswith("http.admin.") for name in data["other"])  # Envoy's own admin

    env = {"DGW_SERVER": f"127.0.0.1:{host.server.admin_port}", "DGW_TOKEN": host.server.token}
    shown = dgw("stats", host.shard, "--window", "60s", env=env, timeout=30)
    assert shown.returncode == 0, shown.stderr
    row = next(line for line in shown.stdout.splitlines() if "dal.cql.alpha" in line)
    assert row.split()[0] == "cluster" and int(row.split()[2]) >= 20
    bad = dgw("stats", host.shard, "--window", "soon", env=env, timeout=30)
    assert bad.returncode == 1 and "window" in bad.stderr and "Traceback" not in bad.stderr
