"""The names both programs accept from outside: shards, node ids, token names,
discovery addresses. One grammar each, always checked against the *whole* name.

``re.match(r"^...$", name)`` accepts ``"demo\\n"`` (``$`` matches before a final
newline), so a name that looks like ``demo`` but is not could become a shard, a node
or a log line of its own. Every check here is a ``fullmatch``; nothing else in the
project checks these names by its own pattern.

The grammars are plain ASCII words: they go into file names, Envoy resource names,
certificate names, SPIFFE IDs and log lines unescaped, so none may hold a control
character, a bidi override or a space.
"""

from __future__ import annotations

import re
from typing import TypeGuard

SHARD_NAME = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}"
"""A shard: 1-63 characters, so ``SHARD.gateway.TRUST_DOMAIN`` is a valid DNS label."""

CONFIG_NAME = SHARD_NAME
"""A DAL or listener name in a shard file (and in the reports that name them)."""

NODE_ID = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}"
"""A gateway host's node id: 1-64 characters, what an X.509 common name may hold
(``ub-common-name``), as the node id is its certificate's CN. Host names fit."""

TOKEN_NAME = r"[A-Za-z0-9][A-Za-z0-9_.@:/-]{0,63}"
"""A token's name: who or what it is for, shown in the audit log."""

DISCOVERY_ADDRESS = r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,252}"
"""A discovery name hosts register under (``demo.dgwsample``)."""

_SHARD = re.compile(SHARD_NAME)
_NODE_ID = re.compile(NODE_ID)
_TOKEN_NAME = re.compile(TOKEN_NAME)
_DISCOVERY_ADDRESS = re.compile(DISCOVERY_ADDRESS)


def is_shard(name: object) -> TypeGuard[str]:
    return isinstance(name, str) and _SHARD.fullmatch(name) is not None


def is_config_name(name: object) -> TypeGuard[str]:
    return is_shard(name)


def is_node_id(name: object) -> TypeGuard[str]:
    return isinstance(name, str) and _NODE_ID.fullmatch(name) is not None


def is_token_name(name: object) -> TypeGuard[str]:
    return isinstance(name, str) and _TOKEN_NAME.fullmatch(name) is not None


def is_discovery_address(name: object) -> TypeGuard[str]:
    return isinstance(name, str) and _DISCOVERY_ADDRESS.fullmatch(name) is not None


SHARD_RULE = "an ASCII letter or digit, then up to 62 letters, digits, _ . or -"
NODE_ID_RULE = "an ASCII letter or digit, then up to 63 letters, digits, _ . or -"
TOKEN_NAME_RULE = "1-64 characters: letters, digits and _ . @ : / - (starting with a letter or digit)"
DISCOVERY_ADDRESS_RULE = "an ASCII letter or digit, then up to 252 letters, digits, _ . : or -"


SOCKET_NAME = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}\.sock"
"""A public listener's Unix socket (``path: api.sock``): a name, never a path. The
gateway makes it in its socket directory, ``LISTENER_SOCKETS`` under its Envoy's
working directory (the sidecar's ``STATE_DIR/SHARD-NODE``), a directory the sidecar
owns: a shard file can never make Envoy replace a file elsewhere on the host."""

LISTENER_SOCKETS = "sockets"

_SOCKET_NAME = re.compile(SOCKET_NAME)


def is_socket_name(name: object) -> TypeGuard[str]:
    return isinstance(name, str) and _SOCKET_NAME.fullmatch(name) is not None
