"""A small client of the xds_server's admin HTTP API (the operators' API).

Where it talks, and with which token, in this order: ``--server`` / ``--token``;
``$DGW_SERVER`` / ``$DGW_TOKEN``; the config file (``$XDG_CONFIG_HOME/dgw/config.yaml``,
default ``~/.config/dgw/config.yaml``: ``server:``, ``token:`` or ``token_file:``);
else the local default server (``http://127.0.0.1:18001``), and for a server on
loopback the admin token its first start saved in the data directory
(``<data dir>/admin.token``), so ``dgw up`` needs no set-up.

Every failure is a ``ClientError`` whose message is the server's own (``{"error"}``,
or each ``{"problems"}`` entry as ``path: message``) or says what to fix; the token
never appears in one.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from xds_server.settings import DEFAULT_ADMIN
from xds_server.store.data_dir import default_data_dir

SERVER_ENV = "DGW_SERVER"
TOKEN_ENV = "DGW_TOKEN"
ADMIN_TOKEN_FILE = "admin.token"
# dgw up's server data directory (dgw.up: DEFAULT_STATE_DIR / UP_SERVER_DIR).
UP_DATA_DIR = Path(".work/up/server")
_LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]"}


class ClientError(Exception):
    """A request that failed; the message is meant for the user as it is."""

    def __init__(self, message: str, status: int | None = None, body: Any = None):
        super().__init__(message)
        self.status = status
        self.body = body


def config_path(env: Mapping[str, str] = os.environ) -> Path:
    base = Path(env["XDG_CONFIG_HOME"]) if env.get("XDG_CONFIG_HOME") else Path.home() / ".config"
    return base / "dgw" / "config.yaml"


def _read_config(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, yaml.YAMLError) as e:
        raise ClientError(f"{path}: cannot read it ({e.__class__.__name__}); "
                          "it holds 'server:' and 'token:' (or 'token_file:')") from None  # fmt: skip
    if data is None:
        return {}
    if not isinstance(data, dict) or set(data) - {"server", "token", "token_file"}:
        raise ClientError(f"{path}: allowed keys are server, token and token_file")
    return data


def _url(server: str) -> str:
    server = server.strip()
    if "://" not in server:
        server = f"http://{server}"
    return server.rstrip("/")


def _is_loopback(url: str) -> bool:
    return (urllib.parse.urlsplit(url).hostname or "") in _LOOPBACK | {"::1"}


def _token_file(path: Path) -> str | None:
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def local_data_dirs(env: Mapping[str, str] = os.environ) -> list[Path]:
    """Where a local server keeps its admin.token: the default data directory, and
    where ``dgw up`` (run from this directory) keeps its server's."""
    return [default_data_dir(env), UP_DATA_DIR]


@dataclass(frozen=True)
class Target:
    """Where to talk and the token to send (None: none found)."""

    server: str
    token: str | None


def resolve(
    server: str | None, token: str | None, env: Mapping[str, str] = os.environ
) -> Target:
    """The server and token, from flags, environment, config file and defaults."""
    config = _read_config(config_path(env))
    url = _url(server or env.get(SERVER_ENV) or config.get("server") or DEFAULT_ADMIN)
    found = token or env.get(TOKEN_ENV) or config.get("token")
    if not found and config.get("token_file"):
        found = _token_file(Path(str(config["token_file"])).expanduser())
    if not found and _is_loopback(url):
        for data_dir in local_data_dirs(env):
            found = _token_file(data_dir / ADMIN_TOKEN_FILE)
            if found:
                break
    return Target(url, found.strip() if found else None)


@dataclass(frozen=True)
class Response:
    status: int
    headers: Mapping[str, str]
    body: Any


class Client:
    """Synchronous JSON requests to one server."""

    def __init__(self, target: Target, timeout: float = 30.0):
        self.target = target
        self.timeout = timeout

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        query: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Response:
        """The response of a 2xx; a ``ClientError`` with the server's message otherwise."""
        url = self.target.server + path
        params = {k: str(v).lower() if isinstance(v, bool) else str(v)
                  for k, v in (query or {}).items() if v is not None}  # fmt: skip
        if params:
            url += "?" + urllib.parse.urlencode(params)
        sent = {"Accept": "application/json", **(headers or {})}
        if self.target.token:
            sent["Authorization"] = f"Bearer {self.target.token}"
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            sent["Content-Type"] = "application/json"
        request = urllib.request.Request(url, data=data, headers=sent, method=method)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as r:
                return Response(r.status, _lower(r.headers), _decode(r.read(), r.headers))
        except urllib.error.HTTPError as e:
            payload = _decode(e.read(), e.headers)
            raise ClientError(self._message(e.code, payload), e.code, payload) from None
        except (urllib.error.URLError, ConnectionError, TimeoutError) as e:
            reason = getattr(e, "reason", e)
            raise ClientError(
                f"cannot reach the dgw server at {self.target.server}: {reason} "
                f"(is it running? --server or ${SERVER_ENV} names another)"
            ) from None

    def get(self, path: str, **query: Any) -> Any:
        return self.request("GET", path, query=query).body

    def _message(self, status: int, payload: Any) -> str:
        if isinstance(payload, dict):
            problems = payload.get("problems")
            owners = payload.get("owners")
            tell = f"\n(the shard's owners: {', '.join(map(str, owners))})" if isinstance(owners, list) and owners else ""
            if isinstance(problems, list) and problems:
                return "\n".join(
                    f"{p.get('path') or '(file)'}: {p.get('message')}" if isinstance(p, dict) else str(p)
                    for p in problems
                ) + tell
            if isinstance(payload.get("error"), str):
                message = str(payload["error"])
                if status == 401 and not self.target.token:
                    places = " or ".join(str(d / ADMIN_TOKEN_FILE) for d in local_data_dirs())
                    message += (f" (no token found: --token, ${TOKEN_ENV}, {config_path()}, "
                                f"or {places} for a local server)")  # fmt: skip
                return message
        return f"the server answered {status}" + (f": {str(payload)[:200]}" if payload else "")


def _lower(headers: Any) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items()}


def _decode(raw: bytes, headers: Any) -> Any:
    if not raw:
        return None
    if "json" in (headers.get("Content-Type") or ""):
        try:
            return json.loads(raw)
        except ValueError:
            pass
    return raw.decode(errors="replace")


def etag_version(headers: Mapping[str, str]) -> int | None:
    """The version an ``ETag: "<n>"`` names (``headers`` as ``Response`` keeps them)."""
    tag = headers.get("etag", "").strip().removeprefix("W/").strip('"')
    return int(tag) if tag.isdigit() else None
