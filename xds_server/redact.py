"""The last guard on what leaves the server: every admin API answer and every log line
has each value a served shard read from the environment masked (``***``).

The stages mask at their source (``config/masking.py``: problems, dry-run diffs, the
shown config); this catches what no stage can: text that comes back from elsewhere
holding a resolved value, such as an Envoy NACK message quoting a resource (shown by
``/v1/nodes`` and logged), or a route added later that forgets. Values of under 4
characters are left to the stages (they mask them where they are a whole scalar):
masking every "80" in every answer would hide ports and counts and protect nothing.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from xds_server.config.masking import SUBSTRING_CHARS, mask, mask_data

Secrets = Callable[[], frozenset[str]]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _needles(values: frozenset[str]) -> list[bytes]:
    """Each value as it may appear in an answer: as UTF-8, and as JSON writes it."""
    out: set[bytes] = set()
    for v in values:
        out.add(v.encode())
        out.add(json.dumps(v)[1:-1].encode())
    return sorted(out)


def masking_middleware(secrets: Secrets) -> Any:
    """aiohttp middleware (the outermost): answers that hold a secret are re-encoded
    with it masked; the others pass untouched (one substring search per secret)."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        response = await handler(request)
        values = frozenset(s for s in secrets() if len(s) >= SUBSTRING_CHARS)
        body = response.body if isinstance(response, web.Response) else None
        if not values or not isinstance(body, bytes) or not any(n in body for n in _needles(values)):
            return response
        assert isinstance(response, web.Response)
        if response.content_type == "application/json":
            text = json.dumps(mask_data(json.loads(body), values))
        else:
            text = mask(body.decode(response.charset or "utf-8", "replace"), values)
        masked = web.Response(text=text, status=response.status, content_type=response.content_type)
        for name, value in response.headers.items():
            if name.lower() not in ("content-length", "content-type"):
                masked.headers[name] = value
        return masked

    return middleware


class LogMasking(logging.Filter):
    """A handler filter: a record whose message holds a secret is rewritten masked."""

    def __init__(self, secrets: Secrets) -> None:
        super().__init__("dgw-masking")
        self._secrets = secrets

    def filter(self, record: logging.LogRecord) -> bool:
        values = frozenset(s for s in self._secrets() if len(s) >= SUBSTRING_CHARS)
        if values:
            message = record.getMessage()
            masked = mask(message, values)
            if masked != message:
                record.msg, record.args = masked, None
        return True

    def install(self) -> None:
        """On every handler of the root logger (where the server's lines go out)."""
        for handler in logging.getLogger().handlers:
            handler.addFilter(self)

    def uninstall(self) -> None:
        for handler in logging.getLogger().handlers:
            handler.removeFilter(self)
