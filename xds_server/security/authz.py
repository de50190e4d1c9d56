"""Who may do what on the control channel: authorization by the caller's certificate.

The caller is what its verified client certificate says (gRPC checked the chain at
the handshake; this module only reads the names):

- a **gateway** (``spiffe://TD/gateway/SHARD``, the node id as the subject's CN): ADS
  for its own shard only (``node.cluster`` must be SHARD), ``Report`` and
  ``WatchConfig`` for its own shard and node id, and renewal of its own certificate;
- a **workload** (``spiffe://TD/ACCOUNT/APP``: a client proxy's identity): ADS for the
  client-proxy discovery shard only;
- **anonymous** (no certificate: the join port): ``SignCertificate`` with a join token
  and nothing else;
- **unchecked**: the server runs ``--insecure``; nothing is checked.

Whoever the caller, a shard and node id must be names of their grammar
(``common.names``) before they reach a log line or a stream's state; a revoked node
(``revocations.py``) is refused everything, and long-lived streams are admitted through
``Sessions`` (a cap per identity; a revoked node's streams end).

A refusal is a gRPC status and a message naming the identity and what it may do; the
callers log it. The protocol state machines (``xds_server/ads``) know nothing of this.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import grpc

from common.names import NODE_ID_RULE, SHARD_RULE, is_node_id, is_shard
from xds_server.config.errors import quote as shorten

from .identity import GATEWAY_ACCOUNT, IdentityError, SpiffeId, parse_spiffe_id
from .sessions import Lease, Sessions


@dataclass(frozen=True)
class Gateway:
    identity: SpiffeId
    node_id: str | None  # the certificate's CN; None for a certificate that binds none

    @property
    def shard(self) -> str:
        return self.identity.app


@dataclass(frozen=True)
class Workload:
    identity: SpiffeId


@dataclass(frozen=True)
class Anonymous:
    """A connection without a client certificate."""


@dataclass(frozen=True)
class Unchecked:
    """The server runs ``--insecure``: every caller may do everything."""


Caller = Gateway | Workload | Anonymous | Unchecked


@dataclass(frozen=True)
class Refusal:
    code: grpc.StatusCode
    message: str


_NO_CERT = (
    "this call needs a client certificate (mTLS on the control port); without one only "
    "SignCertificate with a join token is served (`dgw token create --role node --shard S`)"
)


def caller_from_auth(auth: Mapping[str, Iterable[bytes]], trust_domain: str) -> Caller:
    """The caller a gRPC auth context describes (``context.auth_context()``)."""
    uris = [u.decode() for u in auth.get("peer_spiffe_id", ())]
    if not uris:
        sans = [u.decode() for u in auth.get("x509_subject_alternative_name", ())]
        uris = [u for u in sans if u.startswith("spiffe://")]
    if len(uris) != 1:
        return Anonymous()
    try:
        identity = parse_spiffe_id(uris[0])
    except IdentityError:
        return Anonymous()
    if identity.trust_domain != trust_domain:
        return Anonymous()
    if identity.account == GATEWAY_ACCOUNT:
        cns = list(auth.get("x509_common_name", ()))
        return Gateway(identity, cns[0].decode() if len(cns) == 1 else None)
    return Workload(identity)


def describe(caller: Caller) -> str:
    """For log lines: the identity (and node), never anything secret."""
    match caller:
        case Gateway(identity, node_id):
            return f"{identity}" + (f"#{node_id}" if node_id else "")
        case Workload(identity):
            return str(identity)
        case Anonymous():
            return "anonymous"
        case Unchecked():
            return "unchecked"


def _no_revocations(shard: str, node: str) -> str | None:
    return None


class ControlAuthz:
    """The checks, one per kind of call. ``discovery_shard``: the shard of client proxies;
    ``revoked(shard, node)``: why that node is revoked, or None; ``sessions``: the
    long-lived streams open (None: a cap of 32 per identity)."""

    def __init__(
        self, trust_domain: str, discovery_shard: str, enforce: bool = True,
        revoked: Callable[[str, str], str | None] = _no_revocations, sessions: Sessions | None = None,
    ) -> None:  # fmt: skip
        self.trust_domain = trust_domain
        self.discovery_shard = discovery_shard
        self.enforce = enforce
        self.revoked = revoked
        self.sessions = sessions if sessions is not None else Sessions(32)

    def caller(self, context: grpc.aio.ServicerContext) -> Caller:  # type: ignore[type-arg]
        if not self.enforce:
            return Unchecked()
        return caller_from_auth(context.auth_context(), self.trust_domain)

    def names(self, shard: str, node_id: str) -> Refusal | None:
        """Refused unless ``shard`` and ``node_id`` are whole names of their grammar."""
        if not (is_shard(shard) or shard == self.discovery_shard):
            return Refusal(grpc.StatusCode.INVALID_ARGUMENT, f"shard {shorten(shard)} is not allowed: {SHARD_RULE}")
        if not is_node_id(node_id):
            return Refusal(grpc.StatusCode.INVALID_ARGUMENT,
                           f"node id {shorten(node_id)} is not allowed: {NODE_ID_RULE}")
        return None

    def _revocation(self, caller: Caller, shard: str, node_id: str) -> Refusal | None:
        if isinstance(caller, Gateway) and (why := self.revoked(shard, node_id)) is not None:
            return Refusal(grpc.StatusCode.PERMISSION_DENIED, f"node {shard}/{node_id} is revoked: {why}")
        return None

    def admit(
        self, caller: Caller, shard: str, node_id: str, peer: str, wake: Callable[[], None]
    ) -> Lease | Refusal:
        """A long-lived stream of an authorized caller: counted against its identity."""
        match caller:
            case Gateway(identity, cert_node):
                key: str | None = f"{identity}#{cert_node or node_id}"
            case Workload(identity):
                key = f"{identity}@{peer}"
            case _:
                key = None
        admitted = self.sessions.admit(key, shard, node_id, wake)
        return admitted if isinstance(admitted, Lease) else Refusal(admitted.code, admitted.message)

    def ads(self, caller: Caller, shard: str, node_id: str) -> Refusal | None:
        """May ``caller`` receive ``shard``'s resources as ``node_id``?"""
        refusal = self.names(shard, node_id) or self._revocation(caller, shard, node_id)
        if refusal is not None:
            return refusal
        match caller:
            case Unchecked():
                return None
            case Gateway(identity, cert_node) if identity.app == shard and cert_node in (None, node_id):
                return None
            case Gateway(identity, cert_node) if identity.app == shard:
                return Refusal(grpc.StatusCode.PERMISSION_DENIED,
                               f"{identity} is node {cert_node!r}, not {node_id!r}: set node.id to {cert_node}")
            case Gateway(identity, _):
                return Refusal(grpc.StatusCode.PERMISSION_DENIED,
                               f"{identity} may only receive shard {identity.app!r}'s resources, "
                               f"not shard {shard!r}'s (node.cluster)")
            case Workload(identity) if shard == self.discovery_shard:
                return None
            case Workload(identity):
                return Refusal(grpc.StatusCode.PERMISSION_DENIED,
                               f"{identity} is a client identity: it may only use the discovery "
                               f"shard {self.discovery_shard!r}, not {shard!r}")
            case Anonymous():
                return Refusal(grpc.StatusCode.UNAUTHENTICATED, _NO_CERT)

    def node(self, caller: Caller, shard: str, node_id: str) -> Refusal | None:
        """May ``caller`` report, or watch the config, as ``shard``/``node_id``?"""
        refusal = self.names(shard, node_id) or self._revocation(caller, shard, node_id)
        if refusal is not None:
            return refusal
        match caller:
            case Unchecked():
                return None
            case Gateway(identity, cert_node) if identity.app == shard and cert_node in (None, node_id):
                return None
            case Gateway(identity, cert_node):
                who = f"{identity.app}/{cert_node}" if cert_node else f"shard {identity.app}"
                return Refusal(grpc.StatusCode.PERMISSION_DENIED,
                               f"{identity} ({who}) may not act as {shard}/{node_id}: a gateway "
                               "reports and watches only for itself")
            case Workload(identity):
                return Refusal(grpc.StatusCode.PERMISSION_DENIED,
                               f"{identity} is a client identity: only gateways report and watch config")
            case Anonymous():
                return Refusal(grpc.StatusCode.UNAUTHENTICATED, _NO_CERT)
