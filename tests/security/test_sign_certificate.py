"""``Gateway.SignCertificate`` on a real server: a join token gets a node its first
certificate once; its certificate renews it; nothing else does, and no CSR gets a
name the server did not choose."""

from __future__ import annotations

import datetime as dt
import logging
import os
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from dgw_api.v1 import gateway_pb2
from sidecar.host_identity import SignedIdentity
from sidecar.log import EventLog
from xds_server.security.identity import SpiffeId, consumer_id, gateway_id
from xds_server.security.keys import make_csr, new_private_key, private_key_pem
from xds_server.security.tokens import TokenError, grants, mint
from xds_server.server import XdsServer

from .conftest import ClientCert, control_channel, gateway_stub

pytestmark = pytest.mark.slow


async def _sign(
    server: XdsServer, shard: str, node_id: str, token: str = "", csr: bytes | None = None,
    cert: ClientCert | None = None,
) -> tuple[gateway_pb2.SignResponse, bytes]:
    key = new_private_key()
    request = gateway_pb2.SignRequest(
        shard=shard, node_id=node_id, join_token=token,
        csr_pem=csr if csr is not None else make_csr(key, gateway_id(shard)),
    )
    async with control_channel(server, cert) as channel:
        response = await gateway_stub(channel).SignCertificate(request, timeout=10)
    return response, private_key_pem(key)


async def _refused(server: XdsServer, *args: object, **kwargs: object) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await _sign(server, *args, **kwargs)  # type: ignore[arg-type]
    return info.value


def _leaf(response: gateway_pb2.SignResponse) -> x509.Certificate:
    return x509.load_pem_x509_certificate(response.certificate_chain_pem)


def _uris(cert: x509.Certificate) -> list[str]:
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return [str(u) for u in san.get_values_for_type(x509.UniformResourceIdentifier)]


async def test_join_token_gets_the_first_certificate_once(
    secure_server: XdsServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    token = secure_server.create_join_token("a")
    response, key = await _sign(secure_server, "a", "node-1", token)
    leaf = _leaf(response)
    assert _uris(leaf) == ["spiffe://dgw.local/gateway/a"]
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["a.gateway.dgw.local"]  # for host-name checks
    assert leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "node-1"
    assert leaf.not_valid_after_utc - leaf.not_valid_before_utc <= dt.timedelta(hours=24, minutes=5)
    assert response.trust_bundle_pem == secure_server.ca.bundle_pem  # type: ignore[union-attr]
    leaf.verify_directly_issued_by(secure_server.ca.certificate)  # type: ignore[union-attr]

    again = await _refused(secure_server, "a", "node-2", token)
    assert again.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "already used" in (again.details() or "")

    # The new certificate is the node's identity on the control port: it renews itself.
    cert = ClientCert(key, response.certificate_chain_pem)
    renewed, _ = await _sign(secure_server, "a", "node-1", cert=cert)
    assert _leaf(renewed).serial_number != leaf.serial_number
    other = await _refused(secure_server, "a", "node-2", cert=cert)
    assert other.code() == grpc.StatusCode.PERMISSION_DENIED
    other_shard = await _refused(secure_server, "b", "node-1", cert=cert)
    assert other_shard.code() == grpc.StatusCode.PERMISSION_DENIED

    logged = caplog.text
    assert "event=certificate_signed shard=a node=node-1" in logged
    assert token not in logged and token.split("_", 2)[2] not in logged
    assert b"PRIVATE KEY" not in logged.encode() and key.decode() not in logged


async def test_expired_token_is_refused(secure_server: XdsServer) -> None:
    token = secure_server.create_join_token("a", ttl=dt.timedelta(microseconds=1))
    error = await _refused(secure_server, "a", "node-1", token)
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "expired" in (error.details() or "")


async def test_token_for_another_shard_is_refused_and_not_spent(secure_server: XdsServer) -> None:
    token = secure_server.create_join_token("a")
    error = await _refused(secure_server, "b", "node-1", token)
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "for shard 'a', not 'b'" in (error.details() or "")
    response, _ = await _sign(secure_server, "a", "node-1", token)
    assert _uris(_leaf(response)) == ["spiffe://dgw.local/gateway/a"]


async def test_csr_for_another_identity_gets_only_its_own(secure_server: XdsServer) -> None:
    token = secure_server.create_join_token("a")
    key = new_private_key()
    for wanted in (gateway_id("b"), SpiffeId("dgw.local", "prod", "api")):
        error = await _refused(secure_server, "a", "node-1", token, csr=make_csr(key, wanted))
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED
        assert f"may only be {gateway_id('a')}" in (error.details() or "")
    # A CSR that names nothing gets the shard's identity, chosen by the server.
    bare = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "admin")]))
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
    )
    response, _ = await _sign(secure_server, "a", "node-1", token, csr=bare)
    leaf = _leaf(response)
    assert _uris(leaf) == ["spiffe://dgw.local/gateway/a"]
    assert leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "node-1"


async def test_without_token_or_certificate_nothing_is_signed(secure_server: XdsServer) -> None:
    error = await _refused(secure_server, "a", "node-1")
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "dgw token create --role node --shard a" in (error.details() or "")
    bad = await _refused(secure_server, "a", "node-1", "dgw_not-a-token")
    assert bad.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "dgw_not-a-token" not in (bad.details() or "")


def test_ca_is_made_on_first_start_with_a_private_key(secure_server: XdsServer) -> None:
    ca_dir = secure_server.settings.ca_directory()
    assert os.stat(ca_dir / "ca.key").st_mode & 0o777 == 0o600
    assert (ca_dir / "ca.crt").read_bytes() == secure_server.ca.bundle_pem  # type: ignore[union-attr]


async def test_sidecar_keeps_its_certificate_across_restarts(secure_server: XdsServer, tmp_path: Path) -> None:
    def sidecar_identity(token: str | None) -> SignedIdentity:
        return SignedIdentity(
            identity=gateway_id("a"), directory=tmp_path / "identity",
            server=f"127.0.0.1:{secure_server.xds_port}", join_server=f"127.0.0.1:{secure_server.join_port}",
            shard="a", node_id="n1", join_token=token, trust_bundle=secure_server.ca.bundle_pem,  # type: ignore[union-attr]
            rpc_timeout_s=5, log=EventLog("test"),
        )

    first = await sidecar_identity(secure_server.create_join_token("a")).first()
    assert os.stat(tmp_path / "identity" / "key.pem").st_mode & 0o777 == 0o600
    # Restarted without a token: the stored certificate, which renews itself.
    again = sidecar_identity(None)
    assert (await again.first()).serial == first.serial
    renewed = await again.keeper.refresh()
    assert renewed.serial != first.serial


async def test_a_client_token_gets_its_consumer_identity_once_and_it_renews_itself(secure_server: XdsServer) -> None:
    """`dgw token create --role client --identity demo-app` → `dgw client-proxy --join`."""
    assert secure_server.tokens is not None
    token, record = mint("demo-app-join", "client", dt.datetime.now(dt.UTC), identity="demo-app",
                         ttl=dt.timedelta(minutes=10), one_time=True)
    secure_server.tokens.add(record)
    consumer = consumer_id("account-app", "demo-app")
    key = new_private_key()

    # A CSR for another identity is refused, and the token stays unspent.
    greedy = await _refused(secure_server, "a", "app-1", token, csr=make_csr(key, gateway_id("a")))
    assert greedy.code() == grpc.StatusCode.PERMISSION_DENIED

    response, _ = await _sign(secure_server, "a", "app-1", token, csr=make_csr(key, consumer))
    leaf = _leaf(response)
    assert _uris(leaf) == [consumer.uri]  # the token's consumer, whatever shard was named
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == []
    used = await _refused(secure_server, "a", "app-2", token, csr=make_csr(new_private_key(), consumer))
    assert used.code() == grpc.StatusCode.UNAUTHENTICATED

    # Renewal over mTLS with the current certificate: the same identity, nothing else.
    cert = ClientCert(private_key_pem(key), response.certificate_chain_pem)
    renewed, _ = await _sign(secure_server, "a", "app-1", cert=cert, csr=make_csr(new_private_key(), consumer))
    assert _uris(_leaf(renewed)) == [consumer.uri]
    other = await _refused(secure_server, "a", "app-1", cert=cert,
                           csr=make_csr(new_private_key(), consumer_id("account-app", "prod-api")))
    assert other.code() == grpc.StatusCode.PERMISSION_DENIED


def test_client_tokens_name_one_consumer_and_grant_no_api_role() -> None:
    now = dt.datetime.now(dt.UTC)
    with pytest.raises(TokenError, match="--identity"):
        mint("x", "client", now)
    with pytest.raises(TokenError, match="drop --identity"):
        mint("x", "node", now, shard="a", identity="demo-app")
    _, record = mint("x", "client", now, identity="demo-app")
    assert not any(grants("client", need) for need in ("reader", "operator", "admin", "node"))
    assert record.identity == "demo-app"
