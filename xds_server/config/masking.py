"""Values a shard file took from the environment, masked before anything shows them.

The one rule: mask *first*, then cut, quote or diff. A message cut to 80 characters
before masking keeps 59 characters of a 60-character secret, which no later mask can
find; a diff of two texts that hold a secret shows it on both sides. So the loading
and translating stages run inside ``masking(secrets)``, and ``quote`` / ``clip``
(``errors.py``), which every problem message passes through, mask with the secrets
in scope before they shorten anything.

What is masked: every value read from the environment, as ``***``. A value of under 4
characters is masked only where it is a whole scalar: masking every "1" inside a URL
would hide everything and protect nothing.
"""

from __future__ import annotations

import contextlib
import functools
import re
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

MASK = "***"
SUBSTRING_CHARS = 4

_IN_SCOPE: ContextVar[frozenset[str]] = ContextVar("dgw_masked_values", default=frozenset())


@contextlib.contextmanager
def masking(secrets: frozenset[str]) -> Iterator[None]:
    """Within this block (and threads it starts through ``asyncio.to_thread``, which
    copy the context), ``quote`` and ``clip`` mask ``secrets`` before they cut."""
    token = _IN_SCOPE.set(_IN_SCOPE.get() | secrets)
    try:
        yield
    finally:
        _IN_SCOPE.reset(token)


def in_scope() -> frozenset[str]:
    return _IN_SCOPE.get()


def mask(text: str, secrets: frozenset[str] | None = None) -> str:
    """``text`` with each secret (those in scope when None) as ``***``."""
    secrets = _IN_SCOPE.get() if secrets is None else secrets
    if not secrets:
        return text
    if text in secrets:
        return MASK
    for value in sorted(secrets, key=len, reverse=True):
        if len(value) >= SUBSTRING_CHARS and value in text:
            text = text.replace(value, MASK)
    return text


def with_words(secrets: frozenset[str]) -> frozenset[str]:
    """The secrets and each word of them (runs of letters and digits) of 4 or more
    characters: for text the translator *derived* from a value, where it may appear
    cut at its separators (a consumer ``ACCOUNT-APP`` becomes ``spiffe://TD/ACCOUNT/APP``;
    a URL becomes a host and a port)."""
    return _with_words(secrets) if secrets else secrets


@functools.lru_cache(maxsize=64)
def _with_words(secrets: frozenset[str]) -> frozenset[str]:
    words = {w for s in secrets for w in re.split(r"[^A-Za-z0-9]+", s) if len(w) >= SUBSTRING_CHARS}
    return secrets | words


def mask_data(data: Any, secrets: frozenset[str]) -> Any:
    """A copy of a JSON-like value with every secret masked (in keys too)."""
    if not secrets:
        return data
    if isinstance(data, dict):
        return {mask(str(k), secrets): mask_data(v, secrets) for k, v in data.items()}
    if isinstance(data, list):
        return [mask_data(v, secrets) for v in data]
    if isinstance(data, str):
        return mask(data, secrets)
    if isinstance(data, bool) or data is None:
        return data
    return MASK if str(data) in secrets else data
