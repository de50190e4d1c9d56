"""The host's workload identity: a key made here, a certificate signed by the control
plane from a CSR, renewed at half its lifetime (as Istio's node agent and SPIRE's agent
do), with a new key each time. Only the CSR leaves the host.

``IdentityKeeper`` calls ``on_new`` with each new set of credentials; the sidecar's
SDS server hands them to Envoy, which swaps certificates without a restart and without
dropping connections. Time and sleeping are passed in, so renewal is testable with a
fake clock.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from cryptography import x509

from common.backoff import backoff_delay, jittered
from xds_server.security.identity import SpiffeId
from xds_server.security.keys import make_csr, new_private_key, private_key_pem

log = logging.getLogger("sidecar.identity")

RENEW_AT_FRACTION = 0.5
DEFAULT_RETRY_BASE_S = 1.0
DEFAULT_RETRY_MAX_S = 60.0


@dataclass(frozen=True)
class Signed:
    """What the control plane returns for a CSR."""

    chain_pem: bytes
    bundle_pem: bytes


@dataclass(frozen=True)
class Credentials:
    key_pem: bytes
    chain_pem: bytes
    bundle_pem: bytes
    serial: int
    not_before: dt.datetime
    not_after: dt.datetime

    def __repr__(self) -> str:  # never show the key, wherever this ends up
        return f"Credentials(serial={self.serial:x}, not_after={self.not_after.isoformat()})"


Signer = Callable[[bytes], Awaitable[Signed]]


def renew_at(creds: Credentials, fraction: float = RENEW_AT_FRACTION) -> dt.datetime:
    """When to ask for the next certificate: ``fraction`` of the way through this one's life."""
    return creds.not_before + (creds.not_after - creds.not_before) * fraction


class IdentityKeeper:
    def __init__(
        self,
        identity: SpiffeId | None,  # None: whatever the CA grants (a client join token names it)
        sign: Signer,
        on_new: Callable[[Credentials], None],
        *,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        retry_base_s: float = DEFAULT_RETRY_BASE_S,
        retry_max_s: float = DEFAULT_RETRY_MAX_S,
    ) -> None:
        self.identity = identity
        self._sign = sign
        self._on_new = on_new
        self._clock = clock
        self._sleep = sleep
        self._retry = (retry_base_s, retry_max_s)
        self.current: Credentials | None = None

    async def refresh(self) -> Credentials:
        """A new key and a certificate for it; raises what the signer raises."""
        key = new_private_key()
        signed = await self._sign(make_csr(key, self.identity))
        leaf = x509.load_pem_x509_certificate(signed.chain_pem)
        creds = Credentials(
            key_pem=private_key_pem(key),
            chain_pem=signed.chain_pem,
            bundle_pem=signed.bundle_pem,
            serial=leaf.serial_number,
            not_before=leaf.not_valid_before_utc,
            not_after=leaf.not_valid_after_utc,
        )
        self.current = creds
        self._on_new(creds)
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        granted = san.get_values_for_type(x509.UniformResourceIdentifier)
        log.info(
            "event=certificate_issued identity=%s serial=%x not_after=%s",
            granted[0] if granted else self.identity, creds.serial, creds.not_after.isoformat(),
        )
        return creds

    async def run(self, stop: asyncio.Event) -> None:
        """Keep a valid certificate until ``stop`` is set: renew at half-life, and on a
        failure retry with backoff (the current certificate serves meanwhile)."""
        failures = 0
        while not stop.is_set():
            due = self._clock() if self.current is None else renew_at(self.current)
            wait_s = (due - self._clock()).total_seconds()
            if wait_s > 0:
                await self._sleep(wait_s)
                continue
            try:
                await self.refresh()
                failures = 0
            except Exception as e:  # any failure of the signer: keep what we have, retry
                failures += 1
                delay = jittered(backoff_delay(failures, *self._retry))
                expires = self.current.not_after.isoformat() if self.current else "none yet"
                log.warning(
                    "event=certificate_renewal_failed identity=%s attempt=%d retry_in_s=%.1f "
                    "current_expires=%s error=%s",
                    self.identity, failures, delay, expires, str(e)[:200],
                )
                await self._sleep(delay)
