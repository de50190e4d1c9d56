"""The admin API under generated requests (issue #17): schemathesis makes requests
that fit ``docs/openapi.yaml`` and ones that break it, Hypothesis adds hostile names
and headers, sent as anonymous, a reader and an operator, to a real ``dgw server``
whose served shard read two secrets from its environment. Whatever comes:

- no answer is a 500;
- no answer, and no line of the server's log, holds a secret (or a fragment of one);
- the audit log stays one printable line per event, and no event is recorded twice.

Deterministic (``derandomize``) and bounded, so CI runs the same requests each time.
"""

from __future__ import annotations

import secrets
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import schemathesis
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.generation import GenerationMode

from testkit.ports import free_port
from testkit.wait import wait_until
from tests.support.procs import Child
from xds_server.api.shards_api import OPENAPI_PATH

pytestmark = pytest.mark.slow

PASSWORD = "Fz" + secrets.token_hex(10)  # in a network DAL's URL: shown config only
CONSUMER = f"fuzz_{secrets.token_hex(8)}-app"  # a consumer: Envoy's RBAC holds it (split)
SHARD = """
proxy_config:
  public_listeners:
    api: {mode: grpc, path: 18290, tls_creds: metatron, authz: gandalf}
    db: {mode: tcp, path: 18291}
container_dals:
  kv: {container_listeners: {api: 18292}}
network_dals:
  pg:
    listeners: {db: "postgresql://app:${DGW_LP_FUZZ_PASSWORD}@127.0.0.1:5432"}
    mode: static
registrations:
  - address: sec.dgwsample
deploy_desires:
  consumers:
    - {type: account-app, value: "${DGW_LP_FUZZ_CONSUMER}", group: read-write}
"""
HOSTILE_NAMES = ["demo\n", "x\r\n42  accepted\x1b[8m", "de\u202emo", "n\x00", "a" * 300, "..", "%2e", "sec"]
ROLES = ("anonymous", "reader", "operator")
EXAMPLES = 250


class Server:
    def __init__(self, workdir: Path) -> None:
        (workdir / "shards").mkdir()
        (workdir / "shards" / "sec.yaml").write_text(SHARD)
        self.admin_port = free_port()
        self.url = f"http://127.0.0.1:{self.admin_port}"
        self.log_path = workdir / "server.log"
        self.data_dir = workdir / "data"
        self.child = Child(
            [sys.executable, "-m", "dgw.cli", "server", "--insecure", "--config-dir", str(workdir / "shards"),
             "--xds", f"127.0.0.1:{free_port()}", "--admin", f"127.0.0.1:{self.admin_port}",
             "--data-dir", str(self.data_dir)],
            {"DGW_LP_FUZZ_PASSWORD": PASSWORD, "DGW_LP_FUZZ_CONSUMER": CONSUMER},
            log=self.log_path,
        )  # fmt: skip
        wait_until(lambda: self.child.serving(self.admin_port, "dgw server"), 30, what="the dgw server")
        self.admin = (self.data_dir / "admin.token").read_text().strip()
        self.tokens = {"anonymous": None, **{role: self._token(role) for role in ("reader", "operator")}}

    def _token(self, role: str) -> str:
        made = requests.post(f"{self.url}/v1/tokens", json={"role": role, "name": f"fuzz-{role}"},
                             headers={"Authorization": f"Bearer {self.admin}"}, timeout=10)  # fmt: skip
        made.raise_for_status()
        return str(made.json()["token"])


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    running = Server(tmp_path)
    try:
        yield running
    finally:
        running.child.stop()


def _fragments(secret: str, size: int = 10) -> list[str]:
    return [secret[i:i + size] for i in range(len(secret) - size + 1)]


SECRET_FRAGMENTS = _fragments(PASSWORD) + _fragments(CONSUMER.split("-")[0])


def _leaked(text: str) -> list[str]:
    return [f for f in SECRET_FRAGMENTS if f in text]


header_values = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=60)
hostile_headers = st.fixed_dictionaries({}, optional={
    "If-Match": header_values | st.sampled_from(['"0"', '"1"', 'W/"999999999999999999"']),
    "Content-Type": st.sampled_from(["application/json", "text/plain", "application/json; charset=latin-1"]),
    "X-Forwarded-For": header_values,
})  # fmt: skip
names = st.sampled_from(HOSTILE_NAMES) | st.text(max_size=40)


def test_generated_requests_never_500_never_leak_and_audit_one_line_each(server: Server) -> None:
    schema = schemathesis.openapi.from_dict(yaml.safe_load(OPENAPI_PATH.read_text()))
    operations = [result.ok() for result in schema.get_all_operations()]
    cases = st.one_of([op.as_strategy(generation_mode=mode) for op in operations
                       for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)])  # fmt: skip
    sent = {"mutations": 0}

    @settings(max_examples=EXAMPLES, derandomize=True, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))  # fmt: skip
    @given(case=cases, role=st.sampled_from(ROLES), headers=hostile_headers, name=st.none() | names)
    def one_request(case: schemathesis.Case, role: str, headers: dict[str, str], name: str | None) -> None:
        if name is not None and case.path_parameters:
            case.path_parameters = {**case.path_parameters, next(iter(case.path_parameters)): name}
        token = server.tokens[role]
        generated = {k: v for k, v in (case.headers or {}).items() if k.lower() != "authorization" or not token}
        sent_headers = {**generated, **headers, **({"Authorization": f"Bearer {token}"} if token else {})}
        try:
            response = case.call(base_url=server.url, headers=sent_headers, timeout=15)
        except (requests.exceptions.InvalidHeader, requests.exceptions.InvalidURL, UnicodeError, ValueError):
            return  # the client would not send it
        if case.method.upper() not in ("GET", "HEAD", "OPTIONS"):
            sent["mutations"] += 1
        assert response.status_code < 500, (case.method, case.formatted_path, response.status_code, response.text[:300])
        assert not _leaked(response.text), (case.method, case.formatted_path, response.text[:300])

    one_request()
    log = server.log_path.read_text(errors="replace")
    assert not _leaked(log)
    assert "Traceback" not in log, log[-3000:]
    audit = requests.get(f"{server.url}/v1/audit", params={"limit": 1000},
                         headers={"Authorization": f"Bearer {server.admin}"}, timeout=10).json()["entries"]  # fmt: skip
    assert 0 < len(audit) <= sent["mutations"] + 10  # one per mutation at most (plus the fixture's)
    for entry in audit:
        for field in ("actor", "action", "shard", "reason"):
            value = entry.get(field) or ""
            assert value.isprintable(), (field, value)
        assert not _leaked(str(entry))

