"""Certificates as Envoy SDS secrets: a pure stage, like the rest of the translator.

The sidecar of each host serves these to its own Envoy over a local socket: the
certificate with the private key made on that host, and the trust bundle that client
certificates must chain to. Nothing here touches a file or a network.
"""

from __future__ import annotations

from envoy.config.core.v3 import base_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2


def certificate_secret(name: str, chain_pem: bytes, key_pem: bytes) -> secret_pb2.Secret:
    """A ``tls_certificate`` secret: the leaf (and any intermediates) and its key."""
    return secret_pb2.Secret(
        name=name,
        tls_certificate=common_pb2.TlsCertificate(
            certificate_chain=base_pb2.DataSource(inline_bytes=chain_pem),
            private_key=base_pb2.DataSource(inline_bytes=key_pem),
        ),
    )


def trust_bundle_secret(name: str, bundle_pem: bytes) -> secret_pb2.Secret:
    """A ``validation_context`` secret: the CA certificates a peer must chain to.
    Who may do what is decided by RBAC on the peer's SPIFFE ID, not here."""
    return secret_pb2.Secret(
        name=name,
        validation_context=common_pb2.CertificateValidationContext(
            trusted_ca=base_pb2.DataSource(inline_bytes=bundle_pem),
        ),
    )
