"""An operator never reads the server's secrets (issue #17, item 1): the platform's own
variables are not readable at all; every other interpolated value is masked before
any message is cut and before any diff is made, and no answer or log line holds one."""

from __future__ import annotations

import ast
import logging
import re
from pathlib import Path

import aiohttp

from tests.support.server import admin_headers, running_server
from xds_server.server import XdsServer

from .conftest import settings

ROOT = Path(__file__).resolve().parents[2]
SECURED = """
proxy_config:
  public_listeners:
    api: {mode: grpc, path: 18090, tls_creds: metatron, authz: gandalf}
container_dals:
  kv: {container_listeners: {api: 18091}}
deploy_desires:
  consumers:
    - {type: account-app, value: prod-api, group: read-write}
"""
CONSUMER = "acct_s3cr3tC0nsumerValue-app"
LONG = "L0ng" + "s3cr3t" * 9 + "Zz"  # 60 characters


def _fragments(secret: str, size: int = 10) -> list[str]:
    return [secret[i:i + size] for i in range(len(secret) - size + 1)]


def _leaks(text: str, secret: str) -> list[str]:
    return [f for f in _fragments(secret) if f in text]


async def _call(server: XdsServer, method: str, path: str, **kwargs: object) -> tuple[int, str]:
    url = f"http://127.0.0.1:{server.admin_port}{path}"
    async with aiohttp.ClientSession(headers=admin_headers(server)) as http, \
            http.request(method, url, **kwargs) as r:  # type: ignore[arg-type]
        return r.status, await r.text()


async def test_the_platforms_own_variables_are_never_readable(tmp_path: Path, monkeypatch):
    s = settings(tmp_path)
    async with running_server(s) as server:
        token = (s.state_dir() / "admin.token").read_text().strip()
        monkeypatch.setenv("DGW_TOKEN", token)
        monkeypatch.setenv("DGW_JOIN_TOKEN", token)
        for variable in ("DGW_TOKEN", "DGW_JOIN_TOKEN"):
            text = SECURED.replace("prod-api", "${" + variable + "}")
            status, body = await _call(server, "PUT", "/v1/shards/sec?dry_run=true", json={"yaml": text})
            assert status == 400 and f"variable '{variable}' may not be read" in body
            assert token not in body


async def test_a_dry_run_diff_never_shows_an_interpolated_value(tmp_path: Path, monkeypatch, caplog):
    monkeypatch.setenv("DGW_LP_CONSUMER", CONSUMER)
    s = settings(tmp_path)
    with caplog.at_level(logging.DEBUG):
        async with running_server(s) as server:
            status, _ = await _call(server, "PUT", "/v1/shards/sec", json={"yaml": SECURED})
            assert status == 200
            changed = SECURED.replace("prod-api", "${DGW_LP_CONSUMER}")
            for method, path, body in (
                ("PUT", "/v1/shards/sec?dry_run=true", {"yaml": changed}),
                ("POST", "/v1/batch?dry_run=true", {"changes": [{"shard": "sec", "yaml": changed, "base_version": 1}]}),
            ):
                status, text = await _call(server, method, path, json=body, headers={"If-Match": '"1"'})
                assert status == 200, text
                assert "exact: spiffe://dgw.local/***" in text  # the route's principal changed, masked
                assert not _leaks(text, CONSUMER), text
            status, _ = await _call(server, "PUT", "/v1/shards/sec", json={"yaml": changed}, headers={"If-Match": '"1"'})
            assert status == 200
            for path in ("/v1/shards/sec", "/v1/shards", "/v1/shards/sec/versions/2"):
                status, text = await _call(server, "GET", path)
                assert status == 200 and not _leaks(text, CONSUMER), path
    assert not _leaks(caplog.text, CONSUMER)


async def test_a_value_is_masked_before_a_message_is_cut(tmp_path: Path, monkeypatch, caplog):
    monkeypatch.setenv("DGW_LP_LONG", LONG)
    s = settings(tmp_path)
    # Quoted, the target is cut at 68 characters: 59 of them the secret's, unless masked first.
    bad = SECURED + "wiring:\n  kv: {mode: shadow, target: AAAAAAAA${DGW_LP_LONG}" + "Z" * 40 + "}\n"
    (s.config_dir / "filed.yaml").write_text(bad)
    with caplog.at_level(logging.DEBUG):
        async with running_server(s) as server:
            assert "filed" in server.registry.rejections
            status, text = await _call(server, "PUT", "/v1/shards/api?dry_run=true", json={"yaml": bad})
            assert status == 400 and "wiring" in text
            assert not _leaks(text, LONG), text
            for path in ("/v1/shards", "/v1/shards/filed", "/v1/audit"):
                status, text = await _call(server, "GET", path)
                assert status == 200 and not _leaks(text, LONG), (path, text)
    assert "config_rejected" in caplog.text and not _leaks(caplog.text, LONG)


async def test_no_answer_or_log_line_holds_a_served_value(tmp_path: Path, monkeypatch, caplog):
    # Text that comes back from elsewhere (here a node's report status; an Envoy NACK
    # may quote a resource the same way) is masked by the last guard.
    monkeypatch.setenv("DGW_LP_CONSUMER", CONSUMER)
    s = settings(tmp_path)
    (s.config_dir / "sec.yaml").write_text(SECURED.replace("prod-api", "${DGW_LP_CONSUMER}"))
    with caplog.at_level(logging.DEBUG):
        async with running_server(s) as server:
            report = {"shard": "sec", "node_id": "n1", "status": {"echo": f"got {CONSUMER}!"}, "endpoints": []}
            status, _ = await _call(server, "POST", "/v1/reports", json=report)
            assert status == 200
            status, text = await _call(server, "GET", "/v1/shards/sec")
            assert status == 200 and "got ***!" in text and not _leaks(text, CONSUMER)
            logging.getLogger("xds_server.ads").warning("event=nack message=%s", f"bad principal {CONSUMER}")
    assert "bad principal ***" in caplog.text and not _leaks(caplog.text, CONSUMER)


def test_the_allow_list_names_what_a_shard_may_read():
    from xds_server.config import EnvPolicy
    from xds_server.settings import RESERVED_ENV

    default = EnvPolicy()
    assert default.allows("DGW_DB_PASSWORD") and not default.allows("HOME")
    assert not any(default.allows(name) for name in RESERVED_ENV)
    narrow = EnvPolicy(("DGW_DB_*", "PGPASSWORD"))
    assert narrow.allows("DGW_DB_PASSWORD") and narrow.allows("PGPASSWORD")
    assert not narrow.allows("DGW_OTHER") and not narrow.allows("DGW_TOKEN")


def test_every_dgw_variable_the_platform_reads_is_reserved():
    """A new variable of the platform's own (a credential, a path) must not become
    readable by a shard by accident: every DGW_ name in the programs is reserved,
    except those the sidecar sets for its DALs (sidecar/spec.py) and those dgw up sets
    for its demo shard."""
    from xds_server.settings import RESERVED_ENV

    found: set[str] = set()
    for package in ("common", "dgw", "envoy_proxy", "sidecar", "xds_server"):
        for path in (ROOT / package).rglob("*.py"):
            if path.name == "spec.py" and path.parent.name == "sidecar":
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Constant) and isinstance(node.value, str) and \
                        re.fullmatch(r"DGW_[A-Z0-9_]*[A-Z0-9]", node.value):  # fmt: skip
                    found.add(node.value)
    # Meant for shards: dgw up sets these for the demo shard (deploy/demo/shards/demo.yaml),
    # and the config's version is what the seed's deploy desires read.
    for_shards = {name for name in found if name.startswith("DGW_DEMO_")} | {"DGW_UP_STATE_DIR", "DGW_CONFIG_VERSION"}
    assert found and found - for_shards <= RESERVED_ENV, found - for_shards - RESERVED_ENV
    assert not for_shards & RESERVED_ENV
