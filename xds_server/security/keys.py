"""A private key and a certificate signing request, made on the host that uses them.

The key is written nowhere by this module: the caller keeps it in memory or in a 0600
file of its own (``common.files.write_private``); only the CSR goes to the CA."""

from __future__ import annotations

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509.oid import NameOID

from .identity import SpiffeId


def new_private_key() -> ec.EllipticCurvePrivateKey:
    """EC P-256: what Envoy (BoringSSL) handshakes fastest with, and a ~0.1 ms signature."""
    return ec.generate_private_key(ec.SECP256R1())


def private_key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def make_csr(key: CertificateIssuerPrivateKeyTypes, identity: SpiffeId | None) -> bytes:
    """A PEM CSR asking for ``identity`` (the CA decides what it grants); with None it
    asks for no name (the CA's choice, e.g. the consumer a client join token names)."""
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, identity.trust_domain)]) if identity
        else x509.Name([])
    )
    if identity is not None:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(identity.uri)]), critical=False
        )
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)
