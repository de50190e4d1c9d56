"""The acceptance of a highly available control plane (issue #23), on hosts of their
own: etcd members, replicas and gateways each in a network namespace, the secure
defaults, real Envoys. Each test leaves the cluster whole for the next."""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import re
import subprocess
import time
import urllib.request

import pytest

from testkit.etcd import Member
from testkit.ha_lab import ADMIN, LEASE_TTL_S, SHARD, Cluster, shard_text
from testkit.wait import wait_until
from tests.ha.traffic import Traffic, busy_cpus

pytestmark = [pytest.mark.etcd, pytest.mark.envoy, pytest.mark.slow]

_edits = iter(range(1, 1000))


def _synced_after_edit(cluster: Cluster, replica: str, replicas: list[str] | None = None) -> int:
    status, body = cluster.edit(replica, next(_edits))
    assert status == 200, body
    version = int(body["version"])
    wait_until(lambda: cluster.synced(version, replicas), 45,
               what=f"every Envoy SYNCED at version {version}\n{cluster.logs()}")  # fmt: skip
    return version


def _pushes(cluster: Cluster, replica: str) -> int:
    """xDS responses the replica has sent for the shard (its /metrics)."""
    request = urllib.request.Request(f"http://{cluster.replicas[replica].address}:{ADMIN}/metrics",
                                     headers={"Authorization": f"Bearer {cluster.token}"})  # fmt: skip
    with urllib.request.urlopen(request, timeout=5) as r:
        text = r.read().decode()
    return sum(int(float(m.group(1))) for m in re.finditer(
        rf'^dgw_xds_pushes_total{{[^}}]*shard="{SHARD}"[^}}]*}} (\S+)$', text, re.M))  # fmt: skip


def _wait_moved(cluster: Cluster, away_from: str) -> list[str]:
    survivors = [r for r in cluster.replicas if r != away_from]
    wait_until(lambda: set(cluster.connected(survivors)) == set(cluster.gateways), 45,
               what=f"every Envoy on a replica other than {away_from}\n{cluster.logs()}")  # fmt: skip
    return survivors


def _restart(cluster: Cluster, name: str) -> None:
    replica = cluster.replicas[name]
    replica.start()
    wait_until(replica.serving, 60, what=f"replica {name} to serve again")


def test_an_edit_through_one_replica_reaches_every_envoy(cluster: Cluster) -> None:
    _synced_after_edit(cluster, "r2")


def test_kill_9_of_a_replica_under_load_fails_no_request(cluster: Cluster) -> None:
    victim = cluster.connected()["g1"]
    survivors = [r for r in cluster.replicas if r != victim]
    pushed = {r: _pushes(cluster, r) for r in survivors}
    traffic = Traffic([g.url for g in cluster.gateways.values()]).start()
    try:
        with busy_cpus(cluster.workdir):  # a race that load widens must not show either
            wait_until(lambda: traffic.sent >= 40, 30, what="traffic flowing")
            cluster.replicas[victim].kill()
            _wait_moved(cluster, victim)
            # Versions are content hashes, equal on every replica: a node that
            # reconnects elsewhere is sent nothing it already holds.
            assert {r: _pushes(cluster, r) for r in survivors} == pushed
            _synced_after_edit(cluster, survivors[0], survivors)
            seen = traffic.sent
            wait_until(lambda: traffic.sent >= seen + 40, 30, what="traffic after the edit")
    finally:
        traffic.stop()
        _restart(cluster, victim)
    assert not traffic.failures, traffic.summary()


def test_a_replica_cut_off_from_etcd_refuses_writes_keeps_serving_and_catches_up(cluster: Cluster) -> None:
    where = cluster.connected()
    cut = where["g1"]
    other = next(r for r in cluster.replicas if r != cut)
    host = cluster.replicas[cut].host
    traffic = Traffic([g.url for g in cluster.gateways.values()]).start()
    cluster.lab.cut(host, "ctl")
    try:
        started = time.monotonic()
        status, body = cluster.edit(cut, 900)
        assert status == 503, body
        assert "etcd" in body["error"] and ("unreachable" in body["error"] or "did not answer" in body["error"])
        assert time.monotonic() - started < 15
        wait_until(lambda: cluster.api(cut, "GET", "/healthz")[0] == 503, 30, what="/healthz saying why")
        assert "etcd unreachable" in cluster.api(cut, "GET", "/healthz")[1]["problem"]
        # Meanwhile an edit through another replica is stored; the cut one cannot see it.
        status, body = cluster.edit(other, next(_edits))
        assert status == 200, body
        missed = int(body["version"])
        assert cluster.api(cut, "GET", f"/v1/shards/{SHARD}")[1]["version"] < missed
        seen = traffic.sent
        wait_until(lambda: traffic.sent >= seen + 40, 30, what="traffic while cut off")
    finally:
        cluster.lab.heal(host, "ctl")
    try:
        wait_until(lambda: cluster.api(cut, "GET", f"/v1/shards/{SHARD}")[1].get("version") == missed, 45,
                   what=f"replica {cut} to catch up to version {missed}\n{cluster.replicas[cut].log()[-3000:]}")
        wait_until(lambda: cluster.api(cut, "GET", "/healthz")[0] == 200, 30, what="healthy again")
        _synced_after_edit(cluster, cut)  # and a new edit reaches every Envoy
    finally:
        traffic.stop()
    assert not traffic.failures, traffic.summary()


def test_two_operators_editing_one_shard_through_two_replicas_exactly_one_wins(cluster: Cluster) -> None:
    base = cluster.version("r1")
    texts = [("r1", next(_edits)), ("r3", next(_edits))]

    def put(replica: str, n: int) -> tuple[int, dict]:
        return cluster.api(replica, "PUT", f"/v1/shards/{SHARD}", {"yaml": shard_text(n)}, if_match=base)

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda t: put(*t), texts))
    assert sorted(status for status, _ in results) == [200, 409], results
    won = next(body for status, body in results if status == 200)
    lost = next(body for status, body in results if status == 409)
    assert won["version"] == base + 1 and lost["current_version"] == base + 1
    wait_until(lambda: cluster.synced(base + 1), 45, what="the winner on every Envoy")


def test_a_dead_host_leaves_eds_and_discovery_on_every_replica_within_the_lease_ttl(cluster: Cluster) -> None:
    gone = cluster.gateways["g2"]
    for r in cluster.replicas:
        wait_until(lambda r=r: "g2" in cluster.discovery(r) and "g2" in cluster.eds_nodes(r), 30,
                   what=f"g2 registered on {r}")  # fmt: skip
    gone.kill()
    killed = time.monotonic()
    for r in cluster.replicas:
        wait_until(lambda r=r: "g2" not in cluster.discovery(r) and "g2" not in cluster.eds_nodes(r),
                   LEASE_TTL_S + 10, what=f"g2 gone from {r}'s EDS and discovery")  # fmt: skip
    took = time.monotonic() - killed
    # The lease's TTL, plus the time to notice the closed connection and etcd's own
    # expiry tick (500 ms).
    assert took <= LEASE_TTL_S + 3, f"g2 left after {took:.1f}s, lease TTL {LEASE_TTL_S}s"
    assert "g1" in cluster.discovery("r1")
    gone.start(cluster.join_token())  # a new host joins in its place
    wait_until(gone.answers, 90, what="g2 back")
    for r in cluster.replicas:
        wait_until(lambda r=r: "g2" in cluster.discovery(r), 30, what=f"g2 registered again on {r}")


def test_the_owner_of_a_once_only_job_hands_it_over_when_it_dies(cluster: Cluster) -> None:
    owner = cluster.api("r1", "GET", "/v1/replicas")[1]["owners"]["tidy-tokens"]
    cluster.replicas[owner].kill()
    try:
        survivors = [r for r in cluster.replicas if r != owner]
        wait_until(lambda: cluster.api(survivors[0], "GET", "/v1/replicas")[1]["owners"].get("tidy-tokens")
                   in survivors, LEASE_TTL_S + 15, what="another replica owning tidy-tokens")  # fmt: skip
        owners = cluster.api(survivors[0], "GET", "/v1/replicas")[1]["owners"]
        new = owners["tidy-tokens"]
        assert "tidy-tokens" in cluster.api(new, "GET", "/v1/replicas")[1]["this"]["owns"]
        # Every job (rollouts and migrations too) has a living owner, never the dead one.
        wait_until(lambda: set(cluster.api(survivors[0], "GET", "/v1/replicas")[1]["owners"].values())
                   <= set(survivors), LEASE_TTL_S + 15, what="every job owned by a survivor")  # fmt: skip
        assert {"tidy-tokens", "rollouts", "migrations"} <= set(cluster.api(survivors[0], "GET", "/v1/replicas")[1]["owners"])
    finally:
        _restart(cluster, owner)


def test_etcd_leader_killed_during_edits_loses_none_and_applies_none_twice(cluster: Cluster) -> None:
    leader = _etcd_leader(cluster)
    outcomes: dict[int, int] = {}  # edit → the version it was acknowledged as (0: refused)
    traffic = Traffic([g.url for g in cluster.gateways.values()]).start()
    try:
        for i in range(24):
            if i == 6:
                leader.kill()
            n = next(_edits)
            try:
                status, body = cluster.edit(("r1", "r2", "r3")[i % 3], n)
            except OSError:
                status, body = 0, {}
            outcomes[n] = int(body["version"]) if status == 200 else 0
        acknowledged = {n: v for n, v in outcomes.items() if v}
        assert len(acknowledged) >= 12, f"only {len(acknowledged)} of 24 edits acknowledged: {outcomes}"
        history = cluster.api("r1", "GET", f"/v1/shards/{SHARD}/history?limit=100")[1]["versions"]
        by_hash: dict[str, list[int]] = {}
        for v in history:
            by_hash.setdefault(v["hash"], []).append(v["version"])
        for n, version in outcomes.items():
            stored = by_hash.get(hashlib.sha256(shard_text(n).encode()).hexdigest(), [])
            assert len(stored) <= 1, f"edit {n} was applied {len(stored)} times: versions {stored}"
            if version:  # every acknowledged edit survived, as the version it was told
                assert stored == [version], f"edit {n}, acknowledged as version {version}, is {stored}"
        _synced_after_edit(cluster, "r2")

        # All of etcd down: writes refused with the reason, traffic still flows.
        for member in cluster.etcd.members:
            member.kill()
        version = cluster.api("r3", "GET", f"/v1/shards/{SHARD}")[1]["version"]
        status, body = cluster.api("r3", "PUT", f"/v1/shards/{SHARD}", {"yaml": shard_text(next(_edits))},
                                   if_match=version)  # fmt: skip
        assert status == 503, body
        assert "etcd" in body["error"], body
        seen = traffic.sent
        wait_until(lambda: traffic.sent >= seen + 40, 30, what="traffic with etcd down")
    finally:
        for member in cluster.etcd.members:
            if not member.alive():
                cluster.etcd.restart(member)
    try:
        wait_until(lambda: all(cluster.api(r, "GET", "/healthz")[0] == 200 for r in cluster.replicas), 60,
                   what=f"every replica healthy after etcd returned\n{cluster.logs()}")  # fmt: skip
        _synced_after_edit(cluster, "r3")  # a new edit reaches every Envoy
    finally:
        traffic.stop()
    assert not traffic.failures, traffic.summary()


def _etcd_leader(cluster: Cluster) -> Member:
    for member, host in zip(cluster.etcd.members, cluster.etcd_hosts, strict=True):
        done = subprocess.run([*host.prefix, "etcdctl", "--endpoints", member.client_url, "endpoint", "status",
                               "-w", "json"], capture_output=True, text=True, timeout=30)  # fmt: skip
        if done.returncode == 0:
            status = json.loads(done.stdout)[0]["Status"]
            if status["leader"] == status["header"]["member_id"]:
                return member
    raise AssertionError("no etcd member says it leads")
