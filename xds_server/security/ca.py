"""The control plane's certificate authority: EC P-256, key 0600, short-lived leaves.

``CertificateAuthority.init(dir)`` makes ``ca.key`` (0600) and ``ca.crt``;
``load(dir)`` reads them back. ``sign(csr, identity)`` checks the CSR's signature and
issues a leaf for the identity the *caller* authorized — the SANs a CSR asks for are
ignored, so a host cannot ask for someone else's name. Leaves are for mTLS both ways
(server and client auth) and carry exactly one URI SAN, the SPIFFE ID. Time is passed in
(``now``) so that expiry and renewal are testable with a fake clock.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from common.files import write_private

from .identity import DEFAULT_TRUST_DOMAIN, SpiffeId
from .keys import new_private_key, private_key_pem

CA_KEY_FILE = "ca.key"
CA_CERT_FILE = "ca.crt"
DEFAULT_CA_LIFETIME = dt.timedelta(days=3650)
DEFAULT_LEAF_LIFETIME = dt.timedelta(hours=24)
# Leaves start a little in the past so that a host whose clock runs behind accepts them.
_BACKDATE = dt.timedelta(minutes=5)


class CaError(Exception):
    """The CA cannot do what was asked; the message says what to do about it."""


class CsrError(CaError):
    """A CSR that cannot be signed (bad PEM, bad signature, a key type we do not issue for)."""


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass(frozen=True)
class CertificateAuthority:
    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    trust_domain: str

    @classmethod
    def init(
        cls,
        directory: Path,
        trust_domain: str = DEFAULT_TRUST_DOMAIN,
        lifetime: dt.timedelta = DEFAULT_CA_LIFETIME,
        now: dt.datetime | None = None,
    ) -> CertificateAuthority:
        """Create a new CA in ``directory``; refuses to replace an existing one."""
        key_path, cert_path = directory / CA_KEY_FILE, directory / CA_CERT_FILE
        if key_path.exists() or cert_path.exists():
            raise CaError(f"a CA already exists in {directory} (remove {key_path} and {cert_path} to make a new one)")
        start = now or _utcnow()
        key = new_private_key()
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, trust_domain),
                x509.NameAttribute(NameOID.COMMON_NAME, f"Data Gateway CA ({trust_domain})"),
            ]
        )
        public = key.public_key()
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(start - _BACKDATE)
            .not_valid_after(start + lifetime)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, content_commitment=False, key_encipherment=False,
                    data_encipherment=False, key_agreement=False, key_cert_sign=True,
                    crl_sign=True, encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .sign(key, hashes.SHA256())
        )
        directory.mkdir(parents=True, exist_ok=True)
        write_private(key_path, private_key_pem(key))
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return cls(cert, key, trust_domain)

    @classmethod
    def load(cls, directory: Path) -> CertificateAuthority:
        key_path, cert_path = directory / CA_KEY_FILE, directory / CA_CERT_FILE
        try:
            key_bytes, cert_bytes = key_path.read_bytes(), cert_path.read_bytes()
        except FileNotFoundError as e:
            raise CaError(f"no CA in {directory}: run `dgw ca init --dir {directory}`") from e
        if os.stat(key_path).st_mode & 0o077:
            raise CaError(f"{key_path} is readable by others: chmod 600 {key_path}")
        key = serialization.load_pem_private_key(key_bytes, password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise CaError(f"{key_path} is not an EC private key")
        cert = x509.load_pem_x509_certificate(cert_bytes)
        orgs = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
        trust_domain = str(orgs[0].value) if orgs else DEFAULT_TRUST_DOMAIN
        return cls(cert, key, trust_domain)

    @property
    def bundle_pem(self) -> bytes:
        """The trust bundle: what every peer checks a leaf against."""
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    def sign(
        self,
        csr_pem: bytes,
        identity: SpiffeId,
        lifetime: dt.timedelta = DEFAULT_LEAF_LIFETIME,
        now: dt.datetime | None = None,
        common_name: str | None = None,
    ) -> bytes:
        """A PEM leaf for ``identity`` with the CSR's public key, valid for ``lifetime``
        (never past the CA's own expiry). ``common_name``: the subject CN (a gateway's
        node id), set by the caller like the SAN."""
        if identity.trust_domain != self.trust_domain:
            raise CaError(f"{identity} is outside this CA's trust domain {self.trust_domain}")
        public = check_csr(csr_pem).public_key()
        assert isinstance(public, ec.EllipticCurvePublicKey)  # check_csr made sure
        return self.issue(public, [x509.UniformResourceIdentifier(identity.uri)], lifetime, now, common_name)

    def issue(
        self,
        public: ec.EllipticCurvePublicKey,
        names: list[x509.GeneralName],
        lifetime: dt.timedelta = DEFAULT_LEAF_LIFETIME,
        now: dt.datetime | None = None,
        common_name: str | None = None,
    ) -> bytes:
        """A PEM leaf for ``public`` with exactly these SANs (the server's own
        certificate: its SPIFFE ID, IP addresses and DNS names)."""
        start = now or _utcnow()
        end = min(start + lifetime, self.certificate.not_valid_after_utc)
        subject = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, self.trust_domain)]
        if common_name:
            subject.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name(subject))
            .issuer_name(self.certificate.subject)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            # A short-lived leaf (tests, fast rotation) is backdated less, so that its
            # half-life — when it is renewed — stays in the future.
            .not_valid_before(start - min(_BACKDATE, lifetime / 10))
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, content_commitment=False, key_encipherment=False,
                    data_encipherment=False, key_agreement=False, key_cert_sign=False,
                    crl_sign=False, encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False
            )
            .sign(self.key, hashes.SHA256())
        )
        return cert.public_bytes(serialization.Encoding.PEM)


def check_csr(csr_pem: bytes) -> x509.CertificateSigningRequest:
    """A CSR we can sign: well-formed PEM, self-signed by its key, and the key EC P-256."""
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
    except ValueError as e:
        raise CsrError("the CSR is not a PEM certificate signing request") from e
    try:
        valid = csr.is_signature_valid
    except InvalidSignature:
        valid = False
    if not valid:
        raise CsrError("the CSR's signature does not match its public key")
    public = csr.public_key()
    if not isinstance(public, ec.EllipticCurvePublicKey) or public.curve.name != "secp256r1":
        raise CsrError("the CSR's key must be EC P-256")
    return csr


def csr_uris(csr: x509.CertificateSigningRequest) -> list[str]:
    """The URI SANs a CSR asks for (none when it has no SAN extension)."""
    try:
        san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    return [str(u) for u in san.value.get_values_for_type(x509.UniformResourceIdentifier)]
