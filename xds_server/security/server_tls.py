"""The xds_server's own TLS: its CA (made on first start), its serving certificate
(issued from that CA, short-lived, renewed in-process) and the gRPC credentials that
present it.

The serving certificate names the server's SPIFFE ID (``spiffe://TD/xds-server``),
loopback (``127.0.0.1``, ``::1``, ``localhost``) and any ``--server-name``. It is
reissued, with a new key, once half of its lifetime has passed: gRPC asks for the
certificate at every new handshake (``dynamic_ssl_server_credentials``), so open
streams keep their connection and new ones get the new certificate.

Python's gRPC can either require a verified client certificate or not ask for one at
all (it has no "ask, verify, but do not require"). So the server listens twice: the
control port requires a client certificate chaining to the CA; the join port asks for
none and serves only ``SignCertificate`` with a join token (every other call there
has no identity and is refused).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509

from .ca import CA_CERT_FILE, CA_KEY_FILE, CertificateAuthority
from .identity import server_dns_name, server_uri
from .keys import new_private_key, private_key_pem

log = logging.getLogger("xds_server.security.tls")

LOOPBACK_NAMES: tuple[str, ...] = ("127.0.0.1", "::1", "localhost")
RENEW_AT_FRACTION = 0.5


def load_or_init_ca(directory: Path) -> CertificateAuthority:
    """The CA in ``directory``, created there (key 0600) when there is none yet."""
    if (directory / CA_KEY_FILE).exists() or (directory / CA_CERT_FILE).exists():
        return CertificateAuthority.load(directory)
    ca = CertificateAuthority.init(directory)
    log.info("event=ca_created dir=%s trust_domain=%s", directory, ca.trust_domain)
    return ca


def _general_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


@dataclass(frozen=True)
class _Issued:
    key_pem: bytes
    chain_pem: bytes
    serial: int
    renew_at: dt.datetime

    def __repr__(self) -> str:  # never show the key
        return f"_Issued(serial={self.serial:x})"


class ServingCertificate:
    """The server's certificate, reissued at half its lifetime. gRPC asks for it from
    its own threads, so every read and reissue holds a lock."""

    def __init__(
        self,
        ca: CertificateAuthority,
        lifetime: dt.timedelta,
        extra_names: Iterable[str] = (),
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        self.ca = ca
        self._lifetime = lifetime
        self._names = [x509.UniformResourceIdentifier(server_uri(ca.trust_domain))] + [
            _general_name(n)
            for n in dict.fromkeys([*LOOPBACK_NAMES, server_dns_name(ca.trust_domain), *extra_names])
        ]
        self._clock = clock
        self._lock = threading.Lock()
        self._issued = self._issue()

    def _issue(self) -> _Issued:
        key = new_private_key()
        now = self._clock()
        chain = self.ca.issue(key.public_key(), self._names, self._lifetime, now)
        leaf = x509.load_pem_x509_certificate(chain)
        start, end = leaf.not_valid_before_utc, leaf.not_valid_after_utc
        issued = _Issued(private_key_pem(key), chain, leaf.serial_number,
                         start + (end - start) * RENEW_AT_FRACTION)
        log.info("event=server_certificate_issued serial=%x not_after=%s", issued.serial, end.isoformat())
        return issued

    def current(self) -> _Issued:
        """The certificate to present now, reissued first when it is due."""
        with self._lock:
            if self._clock() >= self._issued.renew_at:
                self._issued = self._issue()
            return self._issued

    @property
    def serial(self) -> int:
        return self.current().serial

    def credentials(self, require_client_cert: bool) -> grpc.ServerCredentials:
        """Server credentials that present the current certificate at each handshake
        and, with ``require_client_cert``, require a client certificate from the CA."""
        first = self.current()
        served = [first.serial]

        def configuration(issued: _Issued) -> grpc.ServerCertificateConfiguration:
            return grpc.ssl_server_certificate_configuration(
                [(issued.key_pem, issued.chain_pem)], root_certificates=self.ca.bundle_pem
            )

        def fetch() -> grpc.ServerCertificateConfiguration | None:
            issued = self.current()
            if issued.serial == served[0]:
                return None
            served[0] = issued.serial
            return configuration(issued)

        # The fetcher returns None for "unchanged", which grpc's stubs do not admit.
        return grpc.dynamic_ssl_server_credentials(
            configuration(first), fetch,  # type: ignore[arg-type]
            require_client_authentication=require_client_cert,
        )
