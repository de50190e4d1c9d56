"""The bootstraps ``envoy_proxy`` makes: from tables, and accepted by the real Envoy."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from envoy_proxy import (
    XDS_CLUSTER,
    XDS_RETRY,
    find_envoy,
    make_bootstrap,
    make_client_bootstrap,
)


def _xds_cluster(config: dict[str, Any]) -> dict[str, Any]:
    (cluster,) = [c for c in config["static_resources"]["clusters"] if c["name"] == XDS_CLUSTER]
    return cluster


def _socket(address: dict[str, Any]) -> tuple[str, int]:
    socket = address["socket_address"]
    return socket["address"], socket["port_value"]


def _xds_socket(config: dict[str, Any]) -> tuple[str, int]:
    endpoint = _xds_cluster(config)["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    return _socket(endpoint["address"])


@pytest.mark.parametrize(
    ("xds", "delta", "api_type", "cluster_type", "socket"),
    [
        ("127.0.0.1:18000", False, "GRPC", "STATIC", ("127.0.0.1", 18000)),
        ("127.0.0.1:18000", True, "DELTA_GRPC", "STATIC", ("127.0.0.1", 18000)),
        ("[::1]:18000", False, "GRPC", "STATIC", ("::1", 18000)),
        ("xds.internal:18000", True, "DELTA_GRPC", "LOGICAL_DNS", ("xds.internal", 18000)),
    ],
)
def test_gateway_bootstrap_names_the_node_and_its_ads_stream(xds, delta, api_type, cluster_type, socket):
    config = make_bootstrap("kv", "i-1", xds, delta)
    assert config["node"] == {"id": "i-1", "cluster": "kv"}
    ads = config["dynamic_resources"]["ads_config"]
    assert ads["api_type"] == api_type
    assert ads["grpc_services"] == [{"envoy_grpc": {"cluster_name": XDS_CLUSTER, "retry_policy": XDS_RETRY}}]
    assert set(config["dynamic_resources"]) == {"ads_config", "cds_config", "lds_config"}
    assert _xds_cluster(config)["type"] == cluster_type
    assert _xds_socket(config) == socket
    assert "admin" not in config  # EnvoyProcess puts admin on its own socket


def test_admin_is_a_unix_socket_only_the_owner_reaches():
    config = make_bootstrap("kv", "i-1", "127.0.0.1:18000", admin_socket="/run/dgw/envoy.admin.sock")
    assert config["admin"] == {"address": {"pipe": {"path": "/run/dgw/envoy.admin.sock", "mode": 0o600}}}


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (("127.0.0.1",), "--xds"),
        (("host:",), "--xds"),
        ((":80",), "--xds"),
        (("h:99999",), "--xds"),
    ],
)
def test_bad_addresses_name_their_flag(args, flag):
    with pytest.raises(ValueError, match=flag):
        make_bootstrap("kv", "i-1", *args)


def test_client_bootstrap_forwards_its_listener_to_the_registered_hosts():
    config = make_client_bootstrap("app-1", "127.0.0.1:18000", "kv.dgw/api", "127.0.0.1:15001")
    assert config["node"] == {"id": "app-1", "cluster": "_discovery"}
    assert set(config["dynamic_resources"]) == {"ads_config"}  # no CDS/LDS: only EDS over ADS
    (gateway,) = [c for c in config["static_resources"]["clusters"] if c["name"] == "gateway"]
    assert gateway["type"] == "EDS"
    assert gateway["eds_cluster_config"]["service_name"] == "kv.dgw/api"
    (listener,) = config["static_resources"]["listeners"]
    assert _socket(listener["address"]) == ("127.0.0.1", 15001)
    (proxy,) = listener["filter_chains"][0]["filters"]
    assert proxy["typed_config"]["cluster"] == "gateway"
    assert "admin" not in config


@pytest.mark.parametrize(
    ("target", "listen", "flag"),
    [
        ("kv.dgw", "127.0.0.1:15001", "--client"),
        ("/api", "127.0.0.1:15001", "--client"),
        ("kv.dgw/", "127.0.0.1:15001", "--client"),
        ("kv.dgw/api", "15001", "--listen"),
    ],
)
def test_bad_client_arguments_name_their_flag(target, listen, flag):
    with pytest.raises(ValueError, match=flag):
        make_client_bootstrap("app-1", "127.0.0.1:18000", target, listen)


@pytest.mark.envoy
@pytest.mark.parametrize(
    "args",
    [
        ["--shard", "kv", "--node-id", "i-1", "--xds", "127.0.0.1:18000"],
        ["--shard", "kv", "--node-id", "i-1", "--xds", "xds.internal:18000", "--delta"],
        ["--client", "kv.dgw/api", "--listen", "127.0.0.1:15001", "--node-id", "app-1",
         "--xds", "127.0.0.1:18000"],
    ],
    ids=["gateway", "gateway-delta-dns", "client"],
)
def test_envoy_accepts_the_bootstraps_dgw_prints(args, tmp_path: Path):
    out = subprocess.run(
        [sys.executable, "-m", "dgw.cli", "bootstrap", *args, "--format", "json"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    path = tmp_path / "bootstrap.json"
    path.write_text(out)
    assert json.loads(out)["node"]["id"] in ("i-1", "app-1")
    check = subprocess.run(
        [find_envoy(), "--mode", "validate", "-c", str(path)], capture_output=True, text=True, timeout=60
    )
    assert check.returncode == 0, check.stdout + check.stderr


@pytest.mark.envoy
def test_a_bootstrap_with_an_sds_socket_names_the_cluster_listeners_use(tmp_path: Path):
    from envoy_proxy import SDS_CLUSTER, make_bootstrap
    from xds_server.translate.security import transport_socket  # noqa: F401  (names SDS_CLUSTER)

    config = make_bootstrap("kv", "i-1", "127.0.0.1:18000", sds_socket=str(tmp_path / "sds.sock"))
    sds = [c for c in config["static_resources"]["clusters"] if c["name"] == SDS_CLUSTER]
    assert sds and sds[0]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"][
        "address"]["pipe"]["path"] == str(tmp_path / "sds.sock")
    path = tmp_path / "bootstrap.json"
    path.write_text(json.dumps(config))
    check = subprocess.run(
        [find_envoy(), "--mode", "validate", "-c", str(path)], capture_output=True, text=True, timeout=60
    )
    assert check.returncode == 0, check.stdout + check.stderr
