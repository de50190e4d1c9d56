"""``kill -9`` of a writing process at a random moment: every acknowledged write is in,
none is half-written, and the database is intact — again and again on one directory.

(A killed process loses nothing the kernel already holds; ``synchronous=FULL`` is what
carries this over to a power cut, which a test cannot pull.)
"""

from __future__ import annotations

import asyncio
import os
import random
import select
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from testkit.procs import ROOT
from tests.store.crash_writer import SHARD, crash_text
from xds_server.store import SqliteStore, content_hash
from xds_server.store.sqlite import DB_NAME

pytestmark = pytest.mark.slow

ROUNDS = 5
ROUND_TIMEOUT = 30.0


def read_acks(proc: subprocess.Popen[bytes], want: int, deadline: float) -> list[int]:
    """Version numbers the writer printed, until ``want`` of them (or it stops printing)."""
    assert proc.stdout is not None
    buffered, acks = b"", []
    while len(acks) < want:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"the writer acknowledged only {acks} in time"
        ready, _, _ = select.select([proc.stdout], [], [], remaining)
        if not ready:
            continue
        chunk = os.read(proc.stdout.fileno(), 65536)
        if not chunk:
            break
        buffered += chunk
        *lines, buffered = buffered.split(b"\n")
        acks += [int(line) for line in lines]
    return acks


def test_kill_9_keeps_every_acknowledged_write_and_no_partial_one(tmp_path: Path) -> None:
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    acked: list[int] = []
    for round_ in range(ROUNDS):
        proc = subprocess.Popen([sys.executable, "-m", "tests.store.crash_writer", str(tmp_path)],
                                cwd=ROOT, stdout=subprocess.PIPE, start_new_session=True)  # fmt: skip
        try:
            deadline = time.monotonic() + ROUND_TIMEOUT
            now = read_acks(proc, rng.randint(1, 40), deadline)
            # The kill lands at a random point of the writes that follow (not a synchronisation).
            time.sleep(rng.uniform(0, 0.02))
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=ROUND_TIMEOUT)
            now += read_acks(proc, 1 << 30, deadline)  # printed before the kill: acknowledged too
        finally:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
        assert proc.returncode == -signal.SIGKILL
        acked += now
        asyncio.run(check(tmp_path, acked, f"round {round_}, seed {seed}"))


async def check(data_dir: Path, acked: list[int], where: str) -> None:
    with sqlite3.connect(data_dir / DB_NAME) as db:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)], where
    store = await SqliteStore.open(data_dir)
    try:
        history = await store.history(SHARD, limit=1 << 30)
        numbers = sorted(v.number for v in history)
        assert numbers == list(range(1, len(numbers) + 1)), where
        # Every acknowledged write; at most one more, committed but killed before it was printed.
        assert set(acked) <= set(numbers) and len(numbers) - max(acked) in (0, 1), (
            where,
            acked[-3:],
            numbers[-3:],
        )
        for number in numbers:
            stored = await store.version(SHARD, number)
            assert stored is not None and stored.text == crash_text(number), (where, number)
            assert stored.meta.content_hash == content_hash(stored.text), (where, number)
        head = await store.get(SHARD)
        assert head is not None and head.meta.number == numbers[-1], where
    finally:
        await store.close()
