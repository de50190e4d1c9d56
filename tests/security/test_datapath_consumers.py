"""The server translates a shard with its consumers: they are the listeners' RBAC, and an
edit of them alone is a new config version that reaches the route table (fast, no
Envoy: the end-to-end proof is in test_datapath_grpc_http.py)."""

from __future__ import annotations

from xds_server.cache import SnapshotCache
from xds_server.config import load_shard_text
from xds_server.resources import LISTENER, ROUTE
from xds_server.shards import ShardRegistry
from xds_server.translate import to_resources

SHARD = """
proxy_config:
  public_listeners:
    api: {mode: http, path: 18080, tls_creds: metatron, authz: gandalf}
    db: {mode: tcp, path: 15432, tls_creds: metatron, authz: gandalf}
container_dals:
  kv: {container_listeners: {api: 18081}}
network_dals:
  rds: {listeners: {db: "postgresql://127.0.0.1:5432"}, mode: static}
deploy_desires:
  consumers:
    - {type: account-app, value: prod-api, group: read-write}
"""
READER = "    - {type: account-app, value: studio_prod-ui, group: read-only}\n"


def _served(registry: ShardRegistry, type_url: str) -> str:
    """The resources of a type the shard's snapshot was built from, as text."""
    return "".join(str(r) for r in to_resources(registry.shards["kv"].ir).by_type[type_url].values())


def test_consumers_become_rbac_and_an_edit_of_them_is_a_new_version():
    registry = ShardRegistry(SnapshotCache())
    assert registry.apply("kv", load_shard_text(SHARD, "kv.yaml"), "kv.yaml")
    version = registry.shards["kv"].config_version
    routes, listeners = _served(registry, ROUTE), _served(registry, LISTENER)
    assert "spiffe://dgw.local/prod/api" in routes and "spiffe://dgw.local/prod/api" in listeners
    assert "studio_prod/ui" not in routes

    assert registry.apply("kv", load_shard_text(SHARD + READER, "kv.yaml"), "kv.yaml")
    assert registry.shards["kv"].config_version != version
    assert "spiffe://dgw.local/studio_prod/ui" in _served(registry, ROUTE)
