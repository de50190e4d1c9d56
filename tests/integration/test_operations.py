"""Operators' changes to a live gateway, through the admin API, with a real Envoy and
sample DALs serving a bounded load: traffic moves as asked and no request fails."""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from testkit.ports import free_port
from testkit.wait import wait_until
from tests.cli.run import dgw

from .conftest import Stack, dal_requests, http_get

pytestmark = [pytest.mark.envoy, pytest.mark.slow]

MAX_REQUESTS = 20_000
MAX_SECONDS = 60.0


class Load:
    """HTTP GETs through Envoy, each on a new connection, one after another, until
    stopped, MAX_REQUESTS or MAX_SECONDS; every answer's DAL and every failure kept."""

    def __init__(self, port: int):
        self.port = port
        self.answers: list[str] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(MAX_SECONDS)

    def _run(self) -> None:
        deadline = time.monotonic() + MAX_SECONDS
        for i in range(MAX_REQUESTS):
            if self._stop.is_set() or time.monotonic() > deadline:
                return
            try:
                status, body = http_get(self.port, f"/item/{i}")
            except OSError as e:
                self.failures.append(f"request {i}: {e!r}")
                continue
            if status != 200:
                self.failures.append(f"request {i}: HTTP {status}")
            else:
                self.answers.append(str(body.get("dal")))

    def recent(self, n: int) -> list[str]:
        """The last n answers, once at least n arrived after this call began."""
        start = len(self.answers)
        wait_until(lambda: len(self.answers) >= start + n, 20, what=f"{n} more answers")
        return self.answers[-n:]

    def settles_on(self, expected: set[str], n: int = 40) -> bool:
        """True once n answers in a row come from exactly the expected DALs."""
        return set(self.recent(n)) == expected


def shard_text(api: int, ports: dict[str, int]) -> str:
    return (
        "# the migration shard\n"
        f"proxy_config:\n  public_listeners:\n    api: {{mode: http, path: {api}}}\n"
        "container_dals:\n"
        + "".join(f"  {name}: {{container_listeners: {{api: {port}}}}}\n" for name, port in ports.items())
        + "wiring:\n  thrift: {mode: shadow, target: cql}  # cql gets a copy\n"
    )


def healthy(dal: str, port: int) -> dict:
    return {"dal": dal, "listener": "api", "address": "127.0.0.1", "port": port, "health": "HEALTHY"}


@pytest.fixture
def sotw_stack(tmp_path: Path):
    stack = Stack(tmp_path, delta=False)
    yield stack
    stack.close()


def test_each_wiring_operation_under_load_moves_traffic_and_fails_no_request(sotw_stack: Stack) -> None:
    stack, server = sotw_stack, sotw_stack.server
    api = free_port()
    ports = {"thrift": free_port(), "cql": free_port()}
    assert server.call("PUT", "/v1/shards/mig", {"yaml": shard_text(api, ports)}, 0)[0] == 200
    for name, port in ports.items():
        stack.dal(name, {"api": port})
    server.report("mig", "node-1", [healthy(n, p) for n, p in ports.items()])
    stack.envoy("mig")
    wait_until(lambda: http_get(api)[1].get("dal") == "thrift", 10, what="the primary through Envoy")

    def synced() -> None:
        """``dgw status --wait``: returns once every Envoy of the shard ACKed."""
        env = {"DGW_SERVER": f"127.0.0.1:{server.admin_port}", "DGW_TOKEN": server.token}
        waited = dgw("status", "--shard", "mig", "--wait", "--timeout", "20", env=env, timeout=60)
        assert waited.returncode == 0, waited.stderr

    def wiring(body: dict, base: int) -> None:
        status, answer = server.call("POST", "/v1/shards/mig/wiring", body, base)
        assert (status, answer.get("version")) == (200, base + 1), answer
        synced()

    with Load(api) as load:
        assert load.settles_on({"thrift"})
        wiring({"op": "split", "source": "thrift", "target": "cql", "percent": 50}, 1)
        wait_until(lambda: load.settles_on({"thrift", "cql"}), 20, what="the split")
        share = Counter(load.recent(200))
        assert 40 <= share["cql"] <= 160, share  # 50 % of 200, loosely
        wiring({"op": "promote", "target": "cql"}, 2)
        wait_until(lambda: load.settles_on({"cql"}), 20, what="cql promoted")
        mirrored = dal_requests(ports["thrift"])
        wait_until(lambda: dal_requests(ports["thrift"]) >= mirrored + 40, 20,
                   what="thrift, the old primary, receiving cql's copies")  # fmt: skip
        wiring({"op": "shadow", "source": "cql", "target": "thrift", "percent": 50}, 3)
        assert load.settles_on({"cql"})
        status, answer = server.call("POST", "/v1/shards/mig/rollback", {"to": 1}, 4)
        assert (status, answer["version"]) == (200, 5)
        synced()
        wait_until(lambda: load.settles_on({"thrift"}), 20, what="rolled back to thrift")
    assert load.failures == [], load.failures[:10]
    assert len(load.answers) > 400
    history = server.call("GET", "/v1/shards/mig/history")[1]["versions"]
    assert [v["source"] for v in history] == ["rollback", "api", "api", "api", "api"]


def test_removing_the_shard_file_under_load_keeps_traffic_flowing(sotw_stack: Stack) -> None:
    stack, server = sotw_stack, sotw_stack.server
    api, port = free_port(), free_port()
    server.write_shard("kv", f"proxy_config:\n  public_listeners:\n    api: {{mode: http, path: {api}}}\n"
                             f"container_dals:\n  kv: {{container_listeners: {{api: {port}}}}}\n")  # fmt: skip
    stack.dal("kv", {"api": port})
    wait_until(lambda: server.call("GET", "/v1/shards/kv")[0] == 200, 10, what="the file stored")
    server.report("kv", "node-1", [healthy("kv", port)])
    stack.envoy("kv")
    wait_until(lambda: http_get(api)[1].get("dal") == "kv", 10, what="kv through Envoy")
    with Load(api) as load:
        assert load.settles_on({"kv"})
        (server.config_dir / "kv.yaml").unlink()
        wait_until(lambda: server.call("GET", "/v1/shards/kv")[1].get("source_missing"), 10,
                   what="the shard marked source_missing")  # fmt: skip
        assert load.settles_on({"kv"}, 200)
    assert load.failures == [], load.failures[:10]
    shard = server.call("GET", "/v1/shards/kv")[1]
    assert shard["owner"] == "file" and shard["version"] == 1 and shard["nodes"] == ["node-1"]
