"""The local CA: keys 0600, leaves for the identity the server decides, short lifetimes."""

import datetime as dt
import os
import stat

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from xds_server.security.ca import CaError, CertificateAuthority, CsrError
from xds_server.security.identity import consumer_id, gateway_id
from xds_server.security.keys import make_csr, new_private_key

NOW = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)


@pytest.fixture
def ca(tmp_path):
    return CertificateAuthority.init(tmp_path / "ca", now=NOW)


def _uris(cert: x509.Certificate) -> list[str]:
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return san.get_values_for_type(x509.UniformResourceIdentifier)


def _verify_client(ca: CertificateAuthority, leaf: x509.Certificate, at: dt.datetime) -> None:
    verifier = PolicyBuilder().store(Store([ca.certificate])).time(at).build_client_verifier()
    verifier.verify(leaf, [])


def test_init_writes_the_key_owner_only_and_refuses_to_replace(tmp_path, ca):
    key = tmp_path / "ca" / "ca.key"
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    assert b"PRIVATE KEY" in key.read_bytes()
    with pytest.raises(CaError, match="already exists"):
        CertificateAuthority.init(tmp_path / "ca")
    again = CertificateAuthority.load(tmp_path / "ca")
    assert again.certificate == ca.certificate
    assert again.trust_domain == "dgw.local"


def test_load_refuses_a_key_others_can_read(tmp_path, ca):
    os.chmod(tmp_path / "ca" / "ca.key", 0o644)
    with pytest.raises(CaError, match="chmod 600"):
        CertificateAuthority.load(tmp_path / "ca")


def test_load_of_a_missing_ca_says_how_to_make_one(tmp_path):
    with pytest.raises(CaError, match="dgw ca init"):
        CertificateAuthority.load(tmp_path / "none")


def test_a_signed_leaf_chains_to_the_bundle_and_names_only_the_granted_identity(ca):
    key = new_private_key()
    # The host asks to be someone else: the CA grants what the caller authorized.
    csr = make_csr(key, consumer_id("account-app", "prod-api"))
    leaf = x509.load_pem_x509_certificate(ca.sign(csr, gateway_id("kv"), now=NOW))
    assert _uris(leaf) == ["spiffe://dgw.local/gateway/kv"]
    assert leaf.public_key().public_numbers() == key.public_key().public_numbers()
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    _verify_client(ca, leaf, NOW + dt.timedelta(hours=1))


def test_leaves_are_short_lived_and_expire(ca):
    csr = make_csr(new_private_key(), gateway_id("kv"))
    leaf = x509.load_pem_x509_certificate(ca.sign(csr, gateway_id("kv"), lifetime=dt.timedelta(minutes=10), now=NOW))
    assert leaf.not_valid_after_utc == NOW + dt.timedelta(minutes=10)
    _verify_client(ca, leaf, NOW + dt.timedelta(minutes=9))
    with pytest.raises(VerificationError):
        _verify_client(ca, leaf, NOW + dt.timedelta(minutes=11))


def test_a_leaf_never_outlives_its_ca(tmp_path):
    short = CertificateAuthority.init(tmp_path / "short", lifetime=dt.timedelta(hours=1), now=NOW)
    csr = make_csr(new_private_key(), gateway_id("kv"))
    leaf = x509.load_pem_x509_certificate(short.sign(csr, gateway_id("kv"), lifetime=dt.timedelta(days=1), now=NOW))
    assert leaf.not_valid_after_utc == short.certificate.not_valid_after_utc


def test_every_leaf_has_its_own_serial(ca):
    csr = make_csr(new_private_key(), gateway_id("kv"))
    serials = {x509.load_pem_x509_certificate(ca.sign(csr, gateway_id("kv"), now=NOW)).serial_number for _ in range(5)}
    assert len(serials) == 5


def test_a_csr_whose_signature_does_not_match_is_refused(ca):
    key, other = new_private_key(), new_private_key()
    good = x509.load_pem_x509_csr(make_csr(key, gateway_id("kv")))
    # Splice another key's public key into the signed request: the signature breaks.
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    mine = key.public_key().public_bytes(serialization.Encoding.DER, spki)
    theirs = other.public_key().public_bytes(serialization.Encoding.DER, spki)
    forged = x509.load_der_x509_csr(good.public_bytes(serialization.Encoding.DER).replace(mine, theirs))
    with pytest.raises(CsrError, match="signature"):
        ca.sign(forged.public_bytes(serialization.Encoding.PEM), gateway_id("kv"), now=NOW)


@pytest.mark.parametrize(
    "key",
    [
        pytest.param(lambda: rsa.generate_private_key(65537, 2048), id="rsa"),
        pytest.param(lambda: ec.generate_private_key(ec.SECP384R1()), id="p384"),
    ],
)
def test_only_p256_keys_are_issued_for(ca, key):
    csr = make_csr(key(), gateway_id("kv"))
    with pytest.raises(CsrError, match="P-256"):
        ca.sign(csr, gateway_id("kv"), now=NOW)


def test_garbage_is_not_a_csr(ca):
    with pytest.raises(CsrError, match="not a PEM"):
        ca.sign(b"-----BEGIN CERTIFICATE REQUEST-----\nxx\n-----END CERTIFICATE REQUEST-----\n", gateway_id("kv"))


def test_an_identity_of_another_trust_domain_is_refused(ca):
    csr = make_csr(new_private_key(), gateway_id("kv"))
    with pytest.raises(CaError, match="trust domain"):
        ca.sign(csr, gateway_id("kv", "example.org"), now=NOW)
