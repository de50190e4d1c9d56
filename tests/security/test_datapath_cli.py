"""``dgw ca init|issue`` and ``dgw client-proxy``'s checks, in process (fast), and the
client proxy's bootstrap as the real Envoy validates it."""

from __future__ import annotations

import stat
import subprocess
from pathlib import Path

import pytest
import yaml
from cryptography import x509

from dgw.cli import main
from dgw.client_proxy import Options, bootstrap
from envoy_proxy import find_envoy


def ca(tmp_path: Path, *args: str) -> int:
    return main(["ca", *args, "--data-dir", str(tmp_path / "data")])


def test_ca_init_then_issue_writes_a_private_key_and_prints_no_secret(tmp_path, capsys):
    assert ca(tmp_path, "init") == 0
    ca_key = tmp_path / "data" / "ca" / "ca.key"
    assert stat.S_IMODE(ca_key.stat().st_mode) == 0o600
    assert str(tmp_path / "data" / "ca" / "ca.crt") in capsys.readouterr().out

    assert ca(tmp_path, "issue", "--identity", "studio_prod-ui", "--out", str(tmp_path / "app"), "--ttl", "90m") == 0
    out = capsys.readouterr().out
    key = tmp_path / "app" / "key.pem"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert "spiffe://dgw.local/studio_prod/ui" in out and str(key) in out
    assert "PRIVATE KEY" not in out and key.read_text().splitlines()[1] not in out
    cert = x509.load_pem_x509_certificate((tmp_path / "app" / "cert.pem").read_bytes())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.UniformResourceIdentifier) == ["spiffe://dgw.local/studio_prod/ui"]
    assert 85 * 60 < (cert.not_valid_after_utc - cert.not_valid_before_utc).total_seconds() - 300 <= 90 * 60
    assert (tmp_path / "app" / "bundle.pem").read_bytes() == (tmp_path / "data" / "ca" / "ca.crt").read_bytes()


def test_ca_errors_say_what_to_do(tmp_path, capsys):
    assert ca(tmp_path, "issue", "--identity", "prod-api", "--out", str(tmp_path / "x")) == 1
    assert f"dgw ca init --data-dir {tmp_path / 'data'}" in capsys.readouterr().err
    assert ca(tmp_path, "init") == 0
    assert ca(tmp_path, "init") == 1
    assert "already exists" in capsys.readouterr().err
    assert ca(tmp_path, "issue", "--identity", "noaccount", "--out", str(tmp_path / "x")) == 1
    assert "must be ACCOUNT-APP" in capsys.readouterr().err
    assert ca(tmp_path, "issue", "--identity", "prod-api", "--out", str(tmp_path / "x"), "--ttl", "soon") == 2
    assert "--ttl" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_client_proxy_refuses_bad_flags_and_files_without_quoting_a_key(tmp_path, capsys):
    base = ["client-proxy", "--shard", "rds", "--listener", "secure_postgres", "--listen", "127.0.0.1:15432"]
    assert main(base) == 2
    assert "--identity CERT KEY" in capsys.readouterr().err
    assert main([*base, "--join", "dgw_x"]) == 2
    assert "--join needs --ca" in capsys.readouterr().err
    assert main([*base[:-1], "127.0.0.1", "--join", "dgw_x", "--ca", "ca.crt"]) == 2
    assert "--listen" in capsys.readouterr().err

    assert ca(tmp_path, "init") == 0
    for app in ("prod-api", "other-app"):
        assert ca(tmp_path, "issue", "--identity", app, "--out", str(tmp_path / app)) == 0
    capsys.readouterr()
    mismatched = [str(tmp_path / "prod-api" / "cert.pem"), str(tmp_path / "other-app" / "key.pem")]
    assert main([*base, "--identity", *mismatched, "--state-dir", str(tmp_path / "s")]) == 1
    err = capsys.readouterr().err
    assert "--identity KEY" in err and "does not belong to the certificate" in err
    assert "PRIVATE KEY" not in err and "Traceback" not in err
    assert main([*base, "--identity", str(tmp_path / "nope.pem"), mismatched[1], "--ca", mismatched[0]]) == 1
    assert "--identity CERT" in capsys.readouterr().err


def _options() -> Options:
    return Options(shard="rds", listener="secure_postgres", address="rds.dgw", listen="127.0.0.1:15432",
                   xds="127.0.0.1:18000", node_id="app-1", delta=False,
                   identity=None, ca=None, join=None, state_dir=None)  # fmt: skip


def test_client_proxy_bootstrap_originates_mtls_to_the_shards_gateway_identity():
    config = bootstrap(_options(), Path("/tmp/dgw-cp/sds.sock"), "dgw.local")
    clusters = {c["name"]: c for c in config["static_resources"]["clusters"]}  # type: ignore[index]
    context = clusters["gateway"]["transport_socket"]["typed_config"]
    assert context["sni"] == "rds.dgw"
    validation = context["common_tls_context"]["combined_validation_context"]
    assert validation["default_validation_context"]["match_typed_subject_alt_names"] == [
        {"san_type": "URI", "matcher": {"exact": "spiffe://dgw.local/gateway/rds"}}]
    assert validation["validation_context_sds_secret_config"]["name"] == "client.trust_bundle"
    assert clusters["dgw_sds"]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"] == {
        "pipe": {"path": "/tmp/dgw-cp/sds.sock"}}
    # The proxy's own ADS connection is mTLS too (the server's default), as the app.
    xds = clusters["dgw_xds"]["transport_socket"]["typed_config"]["common_tls_context"]
    assert xds["tls_certificate_sds_secret_configs"][0]["name"] == "dgw.xds.certificate"


@pytest.mark.envoy
def test_envoy_accepts_the_client_proxy_bootstrap(tmp_path):
    path = tmp_path / "client.yaml"
    path.write_text(yaml.safe_dump(bootstrap(_options(), tmp_path / "sds.sock", "dgw.local")))
    result = subprocess.run([find_envoy(), "--mode", "validate", "-c", str(path), "--log-level", "error"],
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.envoy
def test_join_against_a_server_without_signing_says_to_use_identity(tmp_path):
    """``--join`` calls ``dgw.v1.Gateway.SignCertificate``; a server that does not
    implement it yet is named as such (the call itself is the contract)."""
    import asyncio

    import grpc

    from dgw.client_proxy import ClientProxyError, run
    from testkit.ports import free_port

    async def scenario() -> str:
        server = grpc.aio.server()
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            options = Options(shard="rds", listener="secure_postgres", address="rds.dgw",
                              listen=f"127.0.0.1:{free_port()}", xds=f"127.0.0.1:{port}", node_id="app-1",
                              delta=False, identity=None, ca=None,
                              join="dgw_0123456789ab_" + "x" * 43, state_dir=tmp_path / "s")  # fmt: skip
            with pytest.raises(ClientProxyError) as caught:
                await run(options, asyncio.Event())
            return str(caught.value)
        finally:
            await server.stop(0)

    message = asyncio.run(scenario())
    assert "does not sign certificates" in message and "--identity CERT KEY" in message
    assert "dgw_0123456789ab" not in message
