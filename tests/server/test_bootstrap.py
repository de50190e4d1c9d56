import json
import subprocess
import sys

import pytest

from xds_server.bootstrap import XDS_CLUSTER, make_bootstrap


def test_bootstrap_names_the_node_and_the_ads_stream():
    config = make_bootstrap("kv", "i-1", "127.0.0.1:18000", "127.0.0.1:9901")
    assert config["node"] == {"id": "i-1", "cluster": "kv"}
    ads = config["dynamic_resources"]["ads_config"]
    assert ads["api_type"] == "GRPC"
    assert ads["grpc_services"][0]["envoy_grpc"]["cluster_name"] == XDS_CLUSTER
    xds = config["static_resources"]["clusters"][0]
    assert xds["type"] == "STATIC"
    address = xds["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
    assert address["socket_address"] == {"address": "127.0.0.1", "port_value": 18000}
    assert config["admin"]["address"]["socket_address"]["port_value"] == 9901


def test_delta_and_dns_name():
    config = make_bootstrap("kv", "i-1", "xds.internal:18000", None, delta=True)
    assert config["dynamic_resources"]["ads_config"]["api_type"] == "DELTA_GRPC"
    assert config["static_resources"]["clusters"][0]["type"] == "LOGICAL_DNS"
    assert "admin" not in config


@pytest.mark.parametrize("bad", ["127.0.0.1", "host:", ":80", "h:99999"])
def test_bad_xds_address_is_a_clear_error(bad):
    with pytest.raises(ValueError, match="--xds"):
        make_bootstrap("kv", "i-1", bad)


@pytest.mark.envoy
def test_envoy_accepts_the_bootstrap(tmp_path):
    from tests.support.envoy import envoy_binary

    out = subprocess.run(
        [sys.executable, "-m", "dgw.cli", "bootstrap", "--shard", "kv", "--node-id", "i-1",
         "--xds", "127.0.0.1:18000", "--format", "json"],
        capture_output=True, text=True, check=True,
    ).stdout
    path = tmp_path / "bootstrap.json"
    path.write_text(out)
    assert json.loads(out)["node"]["cluster"] == "kv"
    check = subprocess.run([envoy_binary(), "--mode", "validate", "-c", str(path)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
