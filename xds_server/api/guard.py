"""What every admin request passes before anything reads, records or logs it.

Each path parameter must be a whole name of its grammar (``common.names``): a shard
called ``demo\\n`` or ``x\\r\\n\\x1b[8m`` is answered 400 here, before authentication,
so neither the audit log nor a log line ever holds it. A route whose parameter has no
grammar in ``PARAMETERS`` refuses every request (a new route cannot be left open to
any name by mistake; ``tests/access/test_route_table.py`` checks the table covers them all).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable

from aiohttp import web

from common.names import (
    DISCOVERY_ADDRESS_RULE,
    NODE_ID_RULE,
    SHARD_RULE,
    is_config_name,
    is_discovery_address,
    is_node_id,
    is_shard,
)
from xds_server.config import quote

WORD_RULE = "a plain word: an ASCII letter or digit, then up to 62 letters, digits, _ . or -"
_TOKEN_ID = re.compile(r"[0-9a-f]{12}")
_NUMBER = re.compile(r"[0-9]{1,18}")


def _is_token_id(value: str) -> bool:
    return _TOKEN_ID.fullmatch(value) is not None


def _is_number(value: str) -> bool:
    return _NUMBER.fullmatch(value) is not None


PARAMETERS: dict[str, tuple[Callable[[str], bool], str]] = {
    "shard": (is_shard, SHARD_RULE),
    # Words the deploy routes judge themselves (an artifact's kind and name, a rollout
    # and what to do with it): here only their shape, so no name reaches them unchecked.
    "kind": (is_config_name, WORD_RULE),
    "name": (is_config_name, WORD_RULE),
    "rollout": (is_config_name, WORD_RULE),
    "action": (is_config_name, WORD_RULE),
    "node": (is_node_id, NODE_ID_RULE),
    "address": (is_discovery_address, DISCOVERY_ADDRESS_RULE),
    "token_id": (_is_token_id, "12 hexadecimal digits ('dgw token list' shows them)"),
    "number": (_is_number, "a version number"),
    "n": (_is_number, "a version number"),
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def guard_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    for key, value in request.match_info.items():
        check, rule = PARAMETERS.get(key, (lambda _: False, "a parameter this server has no grammar for"))
        if not check(value):
            # quote() writes control characters as escapes: the answer is one plain line.
            return web.json_response({"error": f"{key} {quote(value)} is not allowed: {rule}"}, status=400)
    return await handler(request)
