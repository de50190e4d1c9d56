"""Renewal of the host's certificate: at half-life, a new key each time, only the CSR
leaves the host, failures retried while the current certificate keeps serving."""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools

import pytest

from sidecar.identity import Credentials, IdentityKeeper, Signed, renew_at
from xds_server.security.ca import CertificateAuthority
from xds_server.security.identity import gateway_id

START = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)
LIFETIME = dt.timedelta(minutes=10)


class FakeTime:
    """A clock that moves only when the code under test sleeps."""

    def __init__(self) -> None:
        self.now = START
        self.sleeps: list[float] = []

    def clock(self) -> dt.datetime:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += dt.timedelta(seconds=seconds)
        await asyncio.sleep(0)


@pytest.fixture
def ca(tmp_path):
    return CertificateAuthority.init(tmp_path / "ca", now=START)


def test_renewal_is_due_at_half_life():
    creds = Credentials(b"", b"", b"", 1, START, START + LIFETIME)
    assert renew_at(creds) == START + LIFETIME / 2


def test_credentials_never_show_their_key():
    creds = Credentials(b"-----BEGIN PRIVATE KEY-----secret", b"", b"", 0xAB, START, START + LIFETIME)
    assert "PRIVATE" not in repr(creds) and "secret" not in str(creds)


async def test_keeper_renews_at_half_life_with_a_new_key_and_sends_only_csrs(ca):
    time = FakeTime()
    sent: list[bytes] = []
    issued: list[Credentials] = []
    stop = asyncio.Event()

    async def sign(csr: bytes) -> Signed:
        sent.append(csr)
        if len(sent) == 3:
            stop.set()
        return Signed(ca.sign(csr, gateway_id("kv"), lifetime=LIFETIME, now=time.now), ca.bundle_pem)

    keeper = IdentityKeeper(gateway_id("kv"), sign, issued.append, clock=time.clock, sleep=time.sleep)
    await asyncio.wait_for(keeper.run(stop), 5)

    assert len(issued) == 3
    assert all(b"CERTIFICATE REQUEST" in csr and b"PRIVATE KEY" not in csr for csr in sent)
    assert len({c.serial for c in issued}) == 3
    assert len({c.key_pem for c in issued}) == 3
    # Each renewal came at half of the previous certificate's life (it was backdated
    # five minutes by the CA: half-life is measured from not_before).
    for before, after in itertools.pairwise(issued):
        assert renew_at(before) <= after.not_before + dt.timedelta(minutes=5) <= before.not_after


async def test_a_failed_renewal_is_retried_with_backoff_and_the_old_certificate_kept(ca):
    time = FakeTime()
    calls = 0
    issued: list[Credentials] = []
    stop = asyncio.Event()

    async def sign(csr: bytes) -> Signed:
        nonlocal calls
        calls += 1
        if calls in (2, 3):
            raise ConnectionError("control plane unreachable")
        if calls == 4:
            stop.set()
        return Signed(ca.sign(csr, gateway_id("kv"), lifetime=LIFETIME, now=time.now), ca.bundle_pem)

    keeper = IdentityKeeper(
        gateway_id("kv"), sign, issued.append, clock=time.clock, sleep=time.sleep,
        retry_base_s=1.0, retry_max_s=8.0,
    )
    await asyncio.wait_for(keeper.run(stop), 5)
    assert calls == 4 and len(issued) == 2
    # Two retries: after the first failure 0.5-1 s, after the second 1-2 s.
    retry_sleeps = time.sleeps[-2:]
    assert 0.5 <= retry_sleeps[0] <= 1.0 and 1.0 <= retry_sleeps[1] <= 2.0
    assert issued[1].not_after > issued[0].not_after
