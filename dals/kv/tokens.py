"""Idempotency tokens: what makes every write safe to send more than once.

A token is minted once per logical write by the client (``new_token``): the time it
was made and 16 random bytes. The write's version is (write time, token id), where the
write time is the generation time unless the token carries another
(``write_time_us``: a backfill copies an item's original time). Every retry, hedge,
shadow copy or backfill of the write sends the same token, so it has the same version
and, by last-writer-wins per item (``engines/base.py``), applies once.

The DAL refuses a token made too long ago or too far ahead (``check``): tombstones
need only be kept as long as that window, and a client with a wild clock cannot pin
items with a version from the future.
"""

from __future__ import annotations

import os
import time

from .engines.base import WRITER_ID_BYTES, Version
from .errors import invalid
from .v1 import kv_pb2


def now_us() -> int:
    return time.time_ns() // 1000


def new_token(generation_time_us: int | None = None, write_time_us: int = 0,
              token_id: bytes | None = None) -> kv_pb2.IdempotencyToken:  # fmt: skip
    """A fresh token: now (or the given time), 128 random bits (or ``token_id``)."""
    return kv_pb2.IdempotencyToken(
        generation_time_us=now_us() if generation_time_us is None else generation_time_us,
        id=os.urandom(WRITER_ID_BYTES) if token_id is None else token_id,
        write_time_us=write_time_us,
    )


def check(token: kv_pb2.IdempotencyToken | None, now: int, max_age_s: float, max_ahead_s: float) -> Version:
    """The write's version, or INVALID_ARGUMENT saying what is wrong with the token."""
    if token is None:
        raise invalid("idempotency_token is missing: every write carries one "
                      "(generation_time_us and a 16-byte id; dals.kv.client makes them)")  # fmt: skip
    if len(token.id) != WRITER_ID_BYTES:
        raise invalid(f"idempotency_token.id must be {WRITER_ID_BYTES} random bytes, not {len(token.id)}")
    if token.generation_time_us <= 0:
        raise invalid("idempotency_token.generation_time_us must be the time the token was made, "
                      "in microseconds since the Unix epoch")  # fmt: skip
    age_s = (now - token.generation_time_us) / 1e6
    if age_s > max_age_s:
        raise invalid(f"idempotency_token was made {age_s:.0f} s ago, over the limit of {max_age_s:.0f} s "
                      "(limits.token_max_age_s); make a new token for a new write")  # fmt: skip
    if -age_s > max_ahead_s:
        raise invalid(f"idempotency_token was made {-age_s:.1f} s in the future, over the limit of "
                      f"{max_ahead_s:.0f} s (limits.token_max_ahead_s); check the client's clock")  # fmt: skip
    write_time = token.write_time_us or token.generation_time_us
    if write_time <= 0 or (write_time - now) / 1e6 > max_ahead_s:
        raise invalid(f"idempotency_token.write_time_us must be a past time in microseconds since the "
                      f"Unix epoch, at most {max_ahead_s:.0f} s ahead (limits.token_max_ahead_s)")  # fmt: skip
    return Version(write_time, token.id)
