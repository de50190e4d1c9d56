"""What the names in ``tls_creds`` and ``authz`` mean on this server.

A shard names providers (the seed says ``tls_creds: metatron``, ``authz: gandalf``);
the server's settings say what each name is. With no settings, the seed's names map to
the embedded defaults, so the seed's examples run unchanged:

- ``metatron`` → ``local_ca``: certificates signed by the xds_server's own CA from
  CSRs of each host's sidecar (``files`` instead reads certificate, key and bundle from
  disk on each host, for certificates that come from elsewhere);
- ``gandalf`` → ``consumers``: Envoy RBAC from the shard's ``deploy_desires.consumers``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from .identity import DEFAULT_TRUST_DOMAIN

TlsProvider = Literal["local_ca", "files"]
AuthzProvider = Literal["consumers"]

DEFAULT_TLS_PROVIDERS: dict[str, TlsProvider] = {"metatron": "local_ca"}
DEFAULT_AUTHZ_PROVIDERS: dict[str, AuthzProvider] = {"gandalf": "consumers"}

# gRPC methods a read-only consumer may call when a DAL declares none (``read_methods``
# in its config): by the usual verbs of reads, and the standard health service.
DEFAULT_GRPC_READ_METHODS: tuple[str, ...] = (
    "/*/Get*",
    "/*/List*",
    "/*/Read*",
    "/*/Scan*",
    "/*/Search*",
    "/*/Describe*",
    "/*/Watch*",
    "/grpc.health.v1.Health/*",
)
HTTP_READ_METHODS: tuple[str, ...] = ("GET", "HEAD", "OPTIONS")


@dataclass(frozen=True)
class Providers:
    tls: dict[str, TlsProvider] = field(default_factory=lambda: dict(DEFAULT_TLS_PROVIDERS))
    authz: dict[str, AuthzProvider] = field(default_factory=lambda: dict(DEFAULT_AUTHZ_PROVIDERS))
    trust_domain: str = DEFAULT_TRUST_DOMAIN


def certificate_secret(provider: str) -> str:
    """The SDS name of a TLS provider's certificate (with its key), as the sidecar serves it."""
    return f"{provider}.certificate"


def trust_bundle_secret(provider: str) -> str:
    """The SDS name of a TLS provider's trust bundle (a validation context)."""
    return f"{provider}.trust_bundle"


def method_pattern_regex(pattern: str) -> str:
    """A ``/package.Service/Method`` pattern (``*`` within one path segment) as the RE2
    regular expression Envoy matches the request path with."""
    parts = [_segment_regex(p) for p in pattern.split("/")]
    return "/".join(parts)


def _segment_regex(segment: str) -> str:
    out = []
    for ch in segment:
        if ch == "*":
            out.append("[^/]*")
        elif ch.isalnum() or ch == "_":
            out.append(ch)
        else:
            out.append("\\" + ch)
    return "".join(out)


