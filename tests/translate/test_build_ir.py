"""build_ir: what the proxy must do, said in the platform's words."""

from __future__ import annotations

from dataclasses import replace

import pytest

from xds_server.config import ConfigError, RuntimeConfig, load_shard_text
from xds_server.security.providers import Providers
from xds_server.translate import GatewayIR, TranslateOptions, build_ir
from xds_server.translate.ir import (
    Backend,
    HostPort,
    Listener,
    Mirror,
    Tls,
    UnixSocket,
    Upstream,
)


def _cfg(text: str) -> RuntimeConfig:
    return load_shard_text(text, "t.yaml", env={})


def _listener(ir: GatewayIR, name: str) -> Listener:
    return {lst.name: lst for lst in ir.listeners}[name]


KV = """
proxy_config:
  public_listeners:
    secure_grpc: {mode: grpc, path: 8980}
    secure_http: {mode: http, path: http.sock}
container_dals:
  kv:
    container_listeners: {secure_grpc: 8980, secure_http: 8443, admin: 8081}
"""


def _topology(gateway: GatewayIR) -> GatewayIR:
    """``gateway`` without its resilience policies (test_resilience.py checks those)."""
    return GatewayIR(
        listeners=tuple(replace(lst, route_classes=(), low_priority=None, shedding=None) for lst in gateway.listeners),
        upstreams=tuple(replace(u, high=None, low=None, ejection=None) for u in gateway.upstreams),
    )


def test_one_dal_behind_grpc_http_and_an_internal_listener() -> None:
    assert _topology(build_ir(_cfg(KV))) == GatewayIR(
        listeners=(
            Listener(
                name="internal.admin", listener="admin", exposure="internal", protocol="tcp",
                bind=HostPort("127.0.0.1", 8081),
                backends=(Backend("dal.kv.admin", 10_000),),
            ),
            Listener(
                name="public.secure_grpc", listener="secure_grpc", exposure="public",
                protocol="grpc", bind=HostPort("127.0.0.1", 8980),
                backends=(Backend("dal.kv.secure_grpc", 10_000),), route="route.secure_grpc",
            ),
            Listener(
                name="public.secure_http", listener="secure_http", exposure="public",
                protocol="http", bind=UnixSocket("http.sock"),
                backends=(Backend("dal.kv.secure_http", 10_000),), route="route.secure_http",
            ),
        ),
        upstreams=(
            Upstream("dal.kv.admin", "kv", "admin", "tcp", "reported", 1.0),
            Upstream("dal.kv.secure_grpc", "kv", "secure_grpc", "grpc", "reported", 1.0),
            Upstream("dal.kv.secure_http", "kv", "secure_http", "http", "reported", 1.0),
        ),
    )


def test_options_set_the_public_address_and_connect_timeout() -> None:
    ir = build_ir(_cfg(KV), TranslateOptions(public_address="0.0.0.0", connect_timeout_s=0.25))
    assert _listener(ir, "public.secure_grpc").bind == HostPort("0.0.0.0", 8980)
    assert _listener(ir, "public.secure_http").bind == UnixSocket("http.sock")
    assert _listener(ir, "internal.admin").bind == HostPort("127.0.0.1", 8081)
    assert {u.connect_timeout_s for u in ir.upstreams} == {0.25}


def _wired(wiring: str, mode: str = "grpc") -> GatewayIR:
    return build_ir(_cfg(f"""
proxy_config:
  public_listeners:
    api: {{mode: {mode}, path: 18080}}
container_dals:
  old:
    container_listeners: {{api: 8080, admin: 8081}}
  new:
    container_listeners: {{api: 8080, admin: 8081}}
wiring:
  old: {wiring}
"""))


def test_full_shadow_copies_every_request_without_a_runtime_key() -> None:
    api = _listener(_wired("{mode: shadow, target: new}"), "public.api")
    assert api.backends == (Backend("dal.old.api", 10_000),)
    assert api.mirrors == (Mirror("dal.new.api", 10_000, None),)


def test_partial_shadow_keeps_fractions_and_names_a_runtime_key() -> None:
    api = _listener(_wired("{mode: shadow, target: new, percent: 0.25}"), "public.api")
    assert api.mirrors == (Mirror("dal.new.api", 25, "dgw.shadow.old.new"),)


def test_shadow_does_not_reach_internal_listeners() -> None:
    admin = _listener(_wired("{mode: shadow, target: new}"), "internal.admin")
    assert admin.backends == (Backend("dal.old.admin", 10_000),)
    assert admin.mirrors == ()


@pytest.mark.parametrize("mode", ["http", "tcp"])
def test_split_shares_public_and_internal_listeners(mode: str) -> None:
    ir = _wired("{mode: split, target: new, percent: 12.5}", mode)
    for name in ("public.api", "internal.admin"):
        listener = _listener(ir, name)
        upstreams = [b.upstream for b in listener.backends]
        assert [b.share for b in listener.backends] == [8750, 1250], name
        assert upstreams == [f"dal.old.{listener.listener}", f"dal.new.{listener.listener}"]


@pytest.mark.parametrize(("percent", "only"), [(0, "dal.old.api"), (100, "dal.new.api")])
def test_split_leaves_out_a_backend_with_no_share(percent: int, only: str) -> None:
    api = _listener(_wired(f"{{mode: split, target: new, percent: {percent}}}", "http"), "public.api")
    assert api.backends == (Backend(only, 10_000),)


def test_network_dal_is_reached_at_its_url_with_the_scheme_default_port() -> None:
    ir = build_ir(_cfg("""
proxy_config:
  public_listeners:
    pg: {mode: tcp, path: 15432}
network_dals:
  rds:
    listeners: {pg: "postgresql://db.example.com"}
    mode: strict_dns
"""))
    assert _topology(ir).upstreams == (
        Upstream("net.rds.pg", "rds", "pg", "tcp", "strict_dns", 1.0, HostPort("db.example.com", 5432)),
    )
    assert _listener(ir, "public.pg").route is None


SECURE = """
proxy_config:
  public_listeners:
    a: {mode: grpc, path: 8980, tls_creds: metatron, authz: gandalf}
    b: {mode: tcp, path: 5432, tls_creds: metatron}
container_dals:
  kv:
    container_listeners: {a: 8980, b: 5432}
"""
CONSUMERS = """
deploy_desires:
  consumers:
    - {type: account-app, value: prod-api, group: read-write}
    - {type: account-app, value: studio_prod-ui, group: read-only}
    - {type: account-app, value: ops-admin, group: read-only}
    - {type: account-app, value: ops-admin, group: read-write}
"""


def test_tls_listeners_take_their_secrets_from_the_named_provider() -> None:
    gateway = build_ir(_cfg(SECURE))
    a, b = _listener(gateway, "public.a"), _listener(gateway, "public.b")
    assert a.tls == Tls("metatron.certificate", "metatron.trust_bundle", ("h2",))
    assert b.tls == Tls("metatron.certificate", "metatron.trust_bundle", ())
    assert b.authz is None


def test_without_consumers_authorization_denies_everyone() -> None:
    authz = _listener(build_ir(_cfg(SECURE)), "public.a").authz
    assert authz is not None
    assert (authz.read_write, authz.read_only) == ((), ())


def test_consumers_become_spiffe_ids_and_read_write_wins_over_read_only() -> None:
    authz = _listener(build_ir(_cfg(SECURE + CONSUMERS)), "public.a").authz
    assert authz is not None
    assert authz.read_write == ("spiffe://dgw.local/ops/admin", "spiffe://dgw.local/prod/api")
    assert authz.read_only == ("spiffe://dgw.local/studio_prod/ui",)
    assert "/[^/]*/Get[^/]*" in authz.grpc_read_methods  # the documented default


def test_the_trust_domain_and_provider_names_come_from_the_server() -> None:
    providers = Providers(tls={"pki": "files"}, authz={"gandalf": "consumers"}, trust_domain="example.org")
    text = SECURE.replace("metatron", "pki") + CONSUMERS
    a = _listener(build_ir(_cfg(text), TranslateOptions(providers=providers)), "public.a")
    assert a.tls is not None and a.tls.certificate == "pki.certificate"
    assert a.authz is not None and "spiffe://example.org/prod/api" in a.authz.read_write


def test_unknown_provider_names_are_refused_at_their_keys_naming_the_known_ones() -> None:
    text = SECURE.replace("tls_creds: metatron, authz: gandalf", "tls_creds: vault, authz: opa")
    with pytest.raises(ConfigError) as caught:
        build_ir(_cfg(text), TranslateOptions(file="shard.yaml"))
    problems = caught.value.problems
    assert [(p.file, p.path) for p in problems] == [
        ("shard.yaml", "proxy_config.public_listeners.a.tls_creds"),
        ("shard.yaml", "proxy_config.public_listeners.a.authz"),
    ]
    assert "known: metatron" in problems[0].message
    assert "known: gandalf" in problems[1].message


def test_a_consumer_that_cannot_be_an_identity_is_refused_at_its_key() -> None:
    text = SECURE + "deploy_desires:\n  consumers:\n    - {type: account-app, value: nodash, group: read-only}\n"
    with pytest.raises(ConfigError) as caught:
        build_ir(_cfg(text))
    assert [p.path for p in caught.value.problems] == ["deploy_desires.consumers[0].value"]
    assert "ACCOUNT-APP" in caught.value.problems[0].message


def test_same_config_same_ir() -> None:
    assert build_ir(_cfg(KV)) == build_ir(_cfg(KV))
