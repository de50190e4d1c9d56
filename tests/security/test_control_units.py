"""The control channel's pure parts: who a certificate makes the caller and what each
caller may do; the server's certificate renewed at half-life; Envoy's mTLS bootstrap;
the files provider; a sidecar with nothing to prove itself with."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path

import grpc
import pytest

from envoy_proxy import make_bootstrap
from envoy_proxy.bootstrap import XDS_CERTIFICATE_SECRET, XDS_TRUST_BUNDLE_SECRET
from sidecar.errors import SidecarError
from sidecar.host_identity import FilesIdentity, SignedIdentity
from sidecar.log import EventLog
from testkit.wait import WaitTimeout, eventually
from xds_server.security.authz import (
    Anonymous,
    ControlAuthz,
    Gateway,
    Unchecked,
    Workload,
    caller_from_auth,
)
from xds_server.security.ca import CertificateAuthority
from xds_server.security.identity import SpiffeId, gateway_id
from xds_server.security.keys import make_csr, new_private_key, private_key_pem
from xds_server.security.server_tls import ServingCertificate

AUTHZ = ControlAuthz("dgw.local", "_discovery")
GW_A = Gateway(gateway_id("a"), "n1")
CLIENT = Workload(SpiffeId("dgw.local", "prod", "api"))


def test_caller_is_what_the_certificate_names() -> None:
    auth = {"peer_spiffe_id": [b"spiffe://dgw.local/gateway/a"], "x509_common_name": [b"n1"]}
    assert caller_from_auth(auth, "dgw.local") == GW_A
    assert caller_from_auth({"peer_spiffe_id": [b"spiffe://dgw.local/prod/api"]}, "dgw.local") == CLIENT
    assert caller_from_auth({}, "dgw.local") == Anonymous()
    assert caller_from_auth({"peer_spiffe_id": [b"spiffe://other.td/gateway/a"]}, "dgw.local") == Anonymous()
    assert caller_from_auth({"peer_spiffe_id": [b"spiffe://dgw.local/x"]}, "dgw.local") == Anonymous()


@pytest.mark.parametrize(
    ("caller", "shard", "node", "code"),
    [
        (GW_A, "a", "n1", None),
        (GW_A, "b", "n1", grpc.StatusCode.PERMISSION_DENIED),
        (GW_A, "a", "n2", grpc.StatusCode.PERMISSION_DENIED),
        (Gateway(gateway_id("a"), None), "a", "any", None),
        (CLIENT, "_discovery", "c1", None),
        (CLIENT, "a", "c1", grpc.StatusCode.PERMISSION_DENIED),
        (Anonymous(), "a", "n1", grpc.StatusCode.UNAUTHENTICATED),
        (Unchecked(), "b", "n9", None),
    ],
)
def test_ads_authorization(caller: object, shard: str, node: str, code: grpc.StatusCode | None) -> None:
    refusal = AUTHZ.ads(caller, shard, node)  # type: ignore[arg-type]
    assert (refusal.code if refusal else None) == code


@pytest.mark.parametrize(
    ("caller", "shard", "node", "code"),
    [
        (GW_A, "a", "n1", None),
        (GW_A, "b", "n1", grpc.StatusCode.PERMISSION_DENIED),
        (GW_A, "a", "n2", grpc.StatusCode.PERMISSION_DENIED),
        (CLIENT, "_discovery", "c1", grpc.StatusCode.PERMISSION_DENIED),
        (Anonymous(), "a", "n1", grpc.StatusCode.UNAUTHENTICATED),
    ],
)
def test_report_and_watch_authorization(caller: object, shard: str, node: str, code: grpc.StatusCode | None) -> None:
    refusal = AUTHZ.node(caller, shard, node)  # type: ignore[arg-type]
    assert (refusal.code if refusal else None) == code


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> CertificateAuthority:
    return CertificateAuthority.init(tmp_path_factory.mktemp("ca"))


def test_server_certificate_is_renewed_at_half_life(ca: CertificateAuthority) -> None:
    now = [dt.datetime(2026, 12, 1, tzinfo=dt.UTC)]
    cert = ServingCertificate(ca, dt.timedelta(hours=1), ["gw.example"], clock=lambda: now[0])
    first = cert.current()
    now[0] += dt.timedelta(minutes=20)
    assert cert.current().serial == first.serial
    now[0] += dt.timedelta(minutes=15)
    renewed = cert.current()
    assert renewed.serial != first.serial and renewed.key_pem != first.key_pem
    assert "BEGIN" not in repr(renewed)


def test_envoy_xds_over_mtls_takes_its_secrets_from_the_local_sds() -> None:
    config = make_bootstrap("a", "n1", "127.0.0.1:18000", sds_socket="/run/dgw/sds.sock", xds_tls=True)
    xds = config["static_resources"]["clusters"][0]
    context = xds["transport_socket"]["typed_config"]["common_tls_context"]
    assert context["alpn_protocols"] == ["h2"]
    assert context["tls_certificate_sds_secret_configs"][0]["name"] == XDS_CERTIFICATE_SECRET
    validation = context["combined_validation_context"]
    assert validation["validation_context_sds_secret_config"]["name"] == XDS_TRUST_BUNDLE_SECRET
    assert validation["default_validation_context"]["match_typed_subject_alt_names"] == [
        {"san_type": "URI", "matcher": {"exact": "spiffe://dgw.local/xds-server"}}
    ]
    assert "transport_socket" not in make_bootstrap("a", "n1", "127.0.0.1:18000")["static_resources"]["clusters"][0]
    with pytest.raises(ValueError, match="SDS socket"):
        make_bootstrap("a", "n1", "127.0.0.1:18000", xds_tls=True)


def _write_set(ca: CertificateAuthority, directory: Path) -> int:
    key = new_private_key()
    chain = ca.sign(make_csr(key, gateway_id("a")), gateway_id("a"))
    (directory / "key.pem").write_bytes(private_key_pem(key))
    (directory / "cert.pem").write_bytes(chain)
    (directory / "ca.pem").write_bytes(ca.bundle_pem)
    from cryptography import x509

    return x509.load_pem_x509_certificate(chain).serial_number


@pytest.mark.slow
async def test_files_provider_reloads_on_change(ca: CertificateAuthority, tmp_path: Path) -> None:
    serial = _write_set(ca, tmp_path)
    files = FilesIdentity(tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "ca.pem", EventLog("t"))
    assert (await files.first()).serial == serial
    seen: list[int] = []
    files.subscribe(lambda c: seen.append(c.serial))
    stop = asyncio.Event()
    watching = asyncio.create_task(files.run(stop))
    try:
        # The watcher has no "ready" signal: a write before it watches goes unseen, so
        # write a new set until one is picked up (bounded).
        for _ in range(20):
            new_serial = _write_set(ca, tmp_path)
            try:
                await eventually(lambda s=new_serial: s in seen, 1.0, what="the files provider's reload")
                break
            except WaitTimeout:
                continue
    finally:
        stop.set()
        await asyncio.wait_for(watching, 5)
    assert seen[-1] == new_serial


def test_files_provider_names_the_bad_file(ca: CertificateAuthority, tmp_path: Path) -> None:
    _write_set(ca, tmp_path)
    (tmp_path / "key.pem").write_bytes(private_key_pem(new_private_key()))  # not the cert's key
    files = FilesIdentity(tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "ca.pem", EventLog("t"))
    with pytest.raises(SidecarError, match="does not belong to the certificate"):
        files.load()
    missing = FilesIdentity(tmp_path / "nope.pem", tmp_path / "key.pem", tmp_path / "ca.pem", EventLog("t"))
    with pytest.raises(SidecarError, match=r"--tls-cert .*nope\.pem"):
        missing.load()


async def test_first_start_without_a_join_token_says_how_to_get_one(tmp_path: Path) -> None:
    identity = SignedIdentity(
        identity=gateway_id("a"), directory=tmp_path, server="127.0.0.1:1", join_server="127.0.0.1:1",
        shard="a", node_id="n1", join_token=None, trust_bundle=None, rpc_timeout_s=1, log=EventLog("t"),
    )
    with pytest.raises(SidecarError, match="dgw token create --role node --shard a"):
        await identity.first()
