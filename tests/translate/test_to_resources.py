"""to_resources, translate and render_yaml: deterministic, sorted, grouped by type."""

from __future__ import annotations

import yaml

from xds_server.config import load_shard_text
from xds_server.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE, Resources
from xds_server.translate import build_ir, render_yaml, to_resources, translate

from .cases import IN

# Names chosen so that input order, name order and type order all differ.
CONFIG = """
proxy_config:
  public_listeners:
    zeta: {mode: tcp, path: 15432}
    alpha: {mode: http, path: 18080}
container_dals:
  web:
    container_listeners: {alpha: 8080, metrics: 9090}
network_dals:
  db:
    listeners: {zeta: "postgresql://127.0.0.1"}
"""


def _serialized(resources: Resources) -> dict[str, list[tuple[str, bytes]]]:
    return {
        type_url: [(name, m.SerializeToString(deterministic=True)) for name, m in messages.items()]
        for type_url, messages in resources.by_type.items()
    }


def test_same_config_same_bytes_in_name_order() -> None:
    cfg = load_shard_text(CONFIG, "t.yaml", env={})
    first, second = translate(cfg), to_resources(build_ir(cfg))
    assert _serialized(first) == _serialized(second)
    assert {t: list(m) for t, m in first.by_type.items()} == {
        CLUSTER: ["dal.web.alpha", "dal.web.metrics", "net.db.zeta"],
        ENDPOINT: ["dal.web.alpha", "dal.web.metrics"],
        LISTENER: ["internal.metrics", "public.alpha", "public.zeta"],
        ROUTE: ["route.alpha"],
    }


def test_every_type_is_present_even_when_empty() -> None:
    cfg = load_shard_text((IN / "network-static.yaml").read_text(), "t.yaml", env={})
    resources = translate(cfg)
    assert resources.of(ROUTE) == {} and resources.of(ENDPOINT) == {}
    assert set(resources.by_type) == {CLUSTER, ENDPOINT, LISTENER, ROUTE}


def test_render_groups_types_in_reading_order_and_leaves_out_empty_ones() -> None:
    cfg = load_shard_text(CONFIG, "t.yaml", env={})
    document = yaml.safe_load(render_yaml(translate(cfg)))
    assert list(document) == ["listeners", "routes", "clusters", "endpoints"]
    assert [c["name"] for c in document["clusters"]] == ["dal.web.alpha", "dal.web.metrics", "net.db.zeta"]
    static = load_shard_text((IN / "network-static.yaml").read_text(), "t.yaml", env={})
    assert list(yaml.safe_load(render_yaml(translate(static)))) == ["listeners", "clusters"]
