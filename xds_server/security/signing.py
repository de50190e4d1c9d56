"""``SignCertificate``'s decision: who may get a certificate, for what.

An application (``dgw client-proxy --join``) proves itself with a one-time ``client``
token that names its consumer (``dgw token create --role client --identity
ACCOUNT-APP``) or, to renew, its current certificate; it gets exactly that consumer's
SPIFFE ID. Gateways:

A node proves itself with either a join token (one-time, short-lived, for one shard:
``dgw token create --role node --shard S``) or, to renew, its current certificate for
the same shard and node id. The CSR must be well formed, EC P-256, and ask for no
identity but the shard's gateway identity; the certificate names exactly that
identity (URI SAN) and the node id (subject CN) — the server sets both, never the CSR.
The caller is checked first (the join port is open to anyone, so nothing costly is
done for an unknown token), then the CSR; the token is spent last, so a CSR that
cannot be signed, or a token for another shard, never spends it.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import dataclass

import grpc
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from common.names import NODE_ID_RULE, SHARD_RULE, is_node_id, is_shard
from xds_server.config.errors import quote

from .authz import Anonymous, Caller, Gateway, Unchecked, Workload, describe
from .ca import CaError, CertificateAuthority, check_csr, csr_uris
from .identity import IdentityError, SpiffeId, consumer_id, gateway_dns_name, gateway_id
from .tokens import Role, TokenError, TokenStore, authenticate, peek

log = logging.getLogger("xds_server.security.signing")

MAX_CSR_BYTES = 16 * 1024  # a P-256 CSR is under 1 KB


class SignRefused(Exception):
    """Not signed; ``message`` is safe to show (it names no secret)."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Signed:
    chain_pem: bytes
    bundle_pem: bytes
    serial: int


class NodeSigner:
    def __init__(
        self,
        ca: CertificateAuthority,
        tokens: TokenStore,
        lifetime: dt.timedelta,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
        revoked: Callable[[str, str], str | None] = lambda shard, node: None,
    ) -> None:
        self.ca = ca
        self.tokens = tokens
        self.lifetime = lifetime
        self._clock = clock
        self._revoked = revoked

    def sign(self, shard: str, node_id: str, csr_pem: bytes, join_token: str, caller: Caller) -> Signed:
        # What the certificate can hold is checked before anything else, the token
        # included: a name it cannot hold must never spend a join token.
        if not is_node_id(node_id):
            raise SignRefused(grpc.StatusCode.INVALID_ARGUMENT,
                              f"node_id {quote(node_id)} is not allowed: {NODE_ID_RULE} (it becomes "
                              "the certificate's common name, at most 64 characters)")

        # Who is asking, before any costly work: the join port is open to anyone.
        consumer = self._consumer(join_token, caller)
        if consumer is not None:
            identity = consumer
        else:
            if not is_shard(shard):
                raise SignRefused(grpc.StatusCode.INVALID_ARGUMENT,
                                  f"shard {quote(shard)} is not allowed: {SHARD_RULE}")
            identity = gateway_id(shard, self.ca.trust_domain)
            self._precheck(shard, node_id, join_token, caller)
        if len(csr_pem) > MAX_CSR_BYTES:
            raise SignRefused(grpc.StatusCode.INVALID_ARGUMENT, f"the CSR is over {MAX_CSR_BYTES} bytes")
        try:
            csr = check_csr(csr_pem)
        except CaError as e:
            raise SignRefused(grpc.StatusCode.INVALID_ARGUMENT, str(e)) from None
        asked = csr_uris(csr)
        if asked and asked != [identity.uri]:
            who = "this application" if consumer is not None else f"a node of shard {shard!r}"
            raise SignRefused(
                grpc.StatusCode.PERMISSION_DENIED,
                f"the CSR asks for {', '.join(a[:120] for a in asked)}; {who} may only be {identity.uri}",
            )
        if not join_token:
            via = "renewal"
        elif consumer is not None:
            via = self._spend_as("client", None, join_token)
        else:
            via = self._spend(shard, join_token)
        public = csr.public_key()
        assert isinstance(public, ec.EllipticCurvePublicKey)  # check_csr made sure
        # Issued from the checked CSR's key (``ca.sign`` would parse and verify it again).
        names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(identity.uri)]
        if consumer is None:
            names.append(x509.DNSName(gateway_dns_name(shard, identity.trust_domain)))
        chain = self.ca.issue(public, names, self.lifetime, self._clock(), common_name=node_id)
        serial = x509.load_pem_x509_certificate(chain).serial_number
        log.info("event=certificate_signed shard=%s node=%s identity=%s serial=%x via=%s",
                 shard, node_id, identity, serial, via)
        return Signed(chain, self.ca.bundle_pem, serial)

    def _precheck(self, shard: str, node_id: str, join_token: str, caller: Caller) -> None:
        """SignRefused unless the caller holds a join token for ``shard`` (not yet judged
        for expiry or use: ``_spend`` does that) or is the certificate it renews, and
        the node is not revoked (neither renewal nor a new join brings it back)."""
        why = self._revoked(shard, node_id)
        if why is not None:
            raise SignRefused(grpc.StatusCode.PERMISSION_DENIED,
                              f"node {shard}/{node_id} is {why}; an admin may reinstate it "
                              "(dgw node reinstate), then it needs a new join token")  # fmt: skip
        if join_token:
            record = peek(self.tokens, join_token)
            if record is None:
                raise SignRefused(grpc.StatusCode.UNAUTHENTICATED, "join token: unknown token")
            if record.role == "node" and record.shard != shard:
                raise SignRefused(grpc.StatusCode.PERMISSION_DENIED,
                                  f"join token {record.name!r} is for shard {record.shard!r}, not {shard!r}")
            return
        match caller:
            case Gateway(identity, cert_node) if identity.app == shard and cert_node == node_id:
                return
            case Gateway() | Workload():
                raise SignRefused(grpc.StatusCode.PERMISSION_DENIED,
                                  f"{describe(caller)} may renew only its own certificate, "
                                  f"not one for {shard}/{node_id}")
            case Anonymous() | Unchecked():
                raise SignRefused(grpc.StatusCode.UNAUTHENTICATED,
                                  "give a join token (`dgw token create --role node --shard "
                                  f"{shard}`), or renew over mTLS with the current certificate")

    def _spend(self, shard: str, join_token: str) -> str:
        """Spend the join token (once, atomically in the store); how it was used, for the log."""
        return self._spend_as("node", shard, join_token)

    def _spend_as(self, role: Role, shard: str | None, join_token: str) -> str:
        try:
            record = authenticate(self.tokens, join_token, role, self._clock(), shard=shard)
        except TokenError as e:
            raise SignRefused(grpc.StatusCode.UNAUTHENTICATED, f"join token: {e}") from None
        return f"join_token:{record.name}"

    def _consumer(self, join_token: str, caller: Caller) -> SpiffeId | None:
        """The consumer identity asked for: a client join token's, or, to renew, the
        calling application's own; None for a gateway's request."""
        if join_token:
            record = peek(self.tokens, join_token)
            if record is None or record.role != "client":
                return None  # a gateway's token (or an unknown one): _precheck says why
            try:
                return consumer_id("account-app", record.identity or "", self.ca.trust_domain)
            except IdentityError as e:
                raise SignRefused(grpc.StatusCode.FAILED_PRECONDITION, f"join token: {e}") from None
        if isinstance(caller, Workload):
            return caller.identity
        return None
