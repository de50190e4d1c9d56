"""Every golden output is a config the real Envoy accepts (``envoy --mode validate``).

The goldens hold what the control plane serves over ADS. To let Envoy check them
offline, each case becomes one bootstrap: its listeners (each RDS reference swapped
for the route table it names, so routes are checked too, down to the clusters they
name), its clusters plus an ``xds`` cluster for their EDS config source, and each
endpoint assignment as the load assignment of a static cluster of its own.

Outputs are rendered afresh rather than read back, so that ``--update-golden``
never validates stale files; the golden tests make sure the two are the same.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from envoy_proxy import find_envoy, sds_cluster

from .cases import case_names, render_case

_HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
# Never contacted: validate mode does not connect, it only needs the cluster to exist.
_XDS_CLUSTER = {
    "name": "xds",
    "type": "STATIC",
    "load_assignment": {
        "cluster_name": "xds",
        "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
            "socket_address": {"address": "127.0.0.1", "port_value": 18000}}}}]}],
    },
    "typed_extension_protocol_options": {
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": {}},
        },
    },
}


# The host sidecar's SDS socket, named by every listener with tls_creds.
_SDS_CLUSTER = sds_cluster("/tmp/dgw-validate-sds.sock")


def _resources(outputs: dict[str, str], name: str, kind: str) -> list[dict[str, Any]]:
    text = outputs.get(f"{name}.{kind}.yaml")
    return yaml.safe_load(text)[kind] if text else []


def _inline_routes(listener: dict[str, Any], routes: dict[str, dict[str, Any]]) -> None:
    for chain in listener["filter_chains"]:
        for network_filter in chain["filters"]:
            config = network_filter["typed_config"]
            if config["@type"] == _HCM:
                config["route_config"] = routes[config.pop("rds")["route_config_name"]]


def bootstrap(name: str) -> dict[str, Any]:
    outputs = render_case(name)
    routes = {r["name"]: r for r in _resources(outputs, name, "routes")}
    listeners = _resources(outputs, name, "listeners")
    for listener in listeners:
        _inline_routes(listener, routes)
    assignment_clusters = [
        {"name": f"validate.{a['cluster_name']}", "type": "STATIC",
         "load_assignment": {**a, "cluster_name": f"validate.{a['cluster_name']}"}}
        for a in _resources(outputs, name, "endpoints")
    ]
    return {
        "node": {"id": "validate", "cluster": "validate"},
        "static_resources": {
            "listeners": listeners,
            "clusters": [*_resources(outputs, name, "clusters"), *assignment_clusters, _XDS_CLUSTER, _SDS_CLUSTER],
        },
        "dynamic_resources": {
            "ads_config": {
                "api_type": "GRPC",
                "transport_api_version": "V3",
                "grpc_services": [{"envoy_grpc": {"cluster_name": "xds"}}],
            },
        },
    }


_TRANSLATED = [n for n in case_names() if f"{n}.error.txt" not in render_case(n)]


@pytest.mark.envoy
@pytest.mark.parametrize("name", _TRANSLATED)
def test_envoy_accepts_golden(name: str, tmp_path: Path) -> None:
    envoy = find_envoy()
    config = tmp_path / f"{name}.bootstrap.yaml"
    config.write_text(yaml.safe_dump(bootstrap(name), sort_keys=False))
    result = subprocess.run(
        [envoy, "--mode", "validate", "-c", str(config), "--log-level", "error"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, f"envoy rejected {name}:\n{result.stdout}\n{result.stderr}"
