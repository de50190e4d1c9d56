"""A small client of the xds_server's admin HTTP API (the operators' API).

Where it talks, and with which token (``resolve``; first found wins):

1. the server: ``--server``, else ``$DGW_SERVER``, else the context's;
2. the context: ``--context``, else ``$DGW_CONTEXT``, else the current one
   (``dgw config``). A context is used only with its own server: given ``--server`` (or
   ``$DGW_SERVER``) for another, the context whose server that is is used instead, or
   none at all, so one server's token never goes to another;
3. the token: ``--token``, else ``$DGW_TOKEN``, else the context's (``token`` or
   ``token_file``);
4. without any context: the local default server, when its admin socket is there
   (the default data dir: ``$DGW_DATA_DIR``, else ``~/.local/share/dgw``).

A token that ``dgw`` found by itself (a context's, the local default's) is sent only
to a server that proves it is the one that wrote it: through the server's admin
socket (``admin_socket``, in its owner-only data directory), where the kernel tells
the process on the other end (``SO_PEERCRED``) and it must run as the owner of the
token file; or over https checked against the context's CA. A loopback TCP port can be
taken by any local user while the server is down; a socket in the server's directory
cannot. A token given on this command line or in ``$DGW_TOKEN`` goes where it is told.

Every failure is a ``ClientError`` whose message is the server's own (``{"error"}``,
or each ``{"problems"}`` entry as ``path: message``) or says what to fix; one about
authentication or TLS names the context and the files read. The token never appears.
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import os
import socket
import ssl
import struct
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xds_server.settings import ADMIN_SOCKET_FILE, DEFAULT_ADMIN
from xds_server.store.data_dir import default_data_dir

from .contexts import Context, ContextError, config_path, load, selected, server_url

SERVER_ENV = "DGW_SERVER"
TOKEN_ENV = "DGW_TOKEN"
ADMIN_TOKEN_FILE = "admin.token"

CA_FILE = "ca/ca.crt"


class ClientError(Exception):
    """A request that failed; the message is meant for the user as it is."""

    def __init__(self, message: str, status: int | None = None, body: Any = None):
        super().__init__(message)
        self.status = status
        self.body = body


@dataclass(frozen=True)
class Target:
    """Where to talk, how, and the token to send (None: none found)."""

    server: str
    token: str | None = None
    token_source: str = "no token"
    context: str | None = None
    config_file: Path = field(default_factory=config_path)
    # Requests go through this socket; the process answering must run as this uid.
    socket: Path | None = None
    peer_uid: int | None = None
    ca: Path | None = None
    notes: tuple[str, ...] = ()

    def describe(self) -> str:
        """What ``-v`` prints: every choice ``resolve`` made."""
        context = f"context {self.context}" if self.context else "no context"
        lines = [f"{context} (contexts: {self.config_file})", f"server {self.server}"
                 + (f" through {self.socket} (answered only by uid {self.peer_uid})" if self.socket else ""),
                 f"token: {self.token_source}", f"CA: {self.ca or 'none'}", *self.notes]  # fmt: skip
        return "\n".join(f"dgw: {line}" for line in lines)

    def blame(self) -> str:
        """What an authentication or TLS error adds: the context and the files read."""
        context = f"context {self.context}" if self.context else "no context"
        parts = [context, f"token: {self.token_source}"]
        if self.ca is not None:
            parts.append(f"CA {self.ca}")
        parts.append(f"contexts: {self.config_file}")
        return "(" + "; ".join(parts) + ")"


def _is_loopback(url: str) -> bool:
    host = urllib.parse.urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _local_default(env: Mapping[str, str]) -> Context | None:
    """The local default server (``dgw server`` without --data-dir) as a context,
    when its admin socket is there."""
    data_dir = default_data_dir(env)
    if not (data_dir / ADMIN_SOCKET_FILE).exists():
        return None
    token = data_dir / ADMIN_TOKEN_FILE
    ca = data_dir / CA_FILE
    return Context(server=DEFAULT_ADMIN, admin_socket=data_dir / ADMIN_SOCKET_FILE,
                   token_file=token if token.exists() else None, ca=ca if ca.exists() else None)


def resolve(
    server: str | None, token: str | None, context: str | None = None,
    env: Mapping[str, str] = os.environ,
) -> Target:  # fmt: skip
    """The server, transport and token, from flags, environment and contexts."""
    config_file = config_path(env)
    try:
        contexts = load(config_file)
        name, why = selected(contexts, context, env)
    except ContextError as e:
        raise ClientError(str(e)) from None
    chosen = contexts.contexts.get(name) if name else None
    notes: list[str] = []
    given = server or env.get(SERVER_ENV)
    if given:
        url = server_url(given)
        origin = "--server" if server else f"${SERVER_ENV}"
        if chosen is not None and chosen.server != url:
            notes.append(f"context {name} ({why}) not used: its server is {chosen.server}, not {origin}'s")
            name, chosen = None, None
        if chosen is None:
            name, chosen = next(((n, c) for n, c in sorted(contexts.contexts.items()) if c.server == url),
                                (None, None))  # fmt: skip
            if name:
                notes.append(f"context {name}: its server is {origin}'s")
    else:
        url = chosen.server if chosen is not None else server_url(DEFAULT_ADMIN)
    local = chosen is None and url == server_url(DEFAULT_ADMIN)
    if local and (found := _local_default(env)) is not None:
        chosen = found
        notes.append(f"the local default server: {default_data_dir(env)} (no context)")
    where = f"context {name}" if name else "the local default server"

    sent, source, owner = token, "--token", None
    token_path: Path | None = None
    if sent is None and env.get(TOKEN_ENV):
        sent, source = env[TOKEN_ENV], f"${TOKEN_ENV}"
    found_by_dgw = False
    if sent is None and chosen is not None:
        if chosen.token is not None:
            sent, source, found_by_dgw = chosen.token, f"{where}'s token", True
        elif (token_path := chosen.path("token_file")) is not None:
            sent, owner = _read_token(token_path, where), token_path.stat().st_uid
            source, found_by_dgw = f"{where}'s token_file {token_path}", True
    if sent is None:
        source = "none (--token, $DGW_TOKEN, or a context: `dgw config get-contexts`)"

    sock = chosen.path("admin_socket") if chosen is not None else None
    if sock is None and token_path is not None and (token_path.parent / ADMIN_SOCKET_FILE).exists():
        sock = token_path.parent / ADMIN_SOCKET_FILE  # the server that wrote it keeps its socket beside it
        notes.append(f"{where}: through {sock}, the socket beside its token_file")
    peer_uid = None
    if sock is not None:
        peer_uid = owner if owner is not None else _owner(sock.parent)
    elif found_by_dgw and url.startswith("http://") and _is_loopback(url):
        raise ClientError(
            f"{where}: its token is not sent to {url}: any local user can listen on a loopback "
            "port, so dgw sends a token it found itself only through the server's admin socket "
            f"(admin_socket: <data dir>/{ADMIN_SOCKET_FILE}) or over https checked with ca "
            f"(contexts: {config_file})"
        )
    return Target(url, sent.strip() if sent else None, source, name, config_file, sock, peer_uid,
                  chosen.path("ca") if chosen is not None else None, tuple(notes))  # fmt: skip


def _read_token(path: Path, where: str) -> str:
    try:
        text = path.read_text().strip()
    except OSError as e:
        raise ClientError(f"{where}: cannot read its token_file {path} ({e.strerror or e})") from None
    if not text:
        raise ClientError(f"{where}: its token_file {path} is empty")
    return text


def _owner(path: Path) -> int | None:
    try:
        return path.stat().st_uid
    except OSError:
        return None


class NotTheServer(OSError):
    """The process on the admin socket is not the one that wrote the token."""


class _UnixConnection(http.client.HTTPConnection):
    """HTTP over the server's admin socket; connects only to a peer of ``peer_uid``."""

    def __init__(self, path: Path, peer_uid: int | None, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path, self._peer_uid = path, peer_uid

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(str(self._path))
            creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
            pid, uid, _ = struct.unpack("3i", creds)
            if self._peer_uid is not None and uid != self._peer_uid:
                raise NotTheServer(f"the process answering on {self._path} (pid {pid}) runs as uid {uid}, "
                                   f"not as uid {self._peer_uid}, who owns the token")  # fmt: skip
        except BaseException:
            sock.close()
            raise
        self.sock = sock


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

    def _connection(self) -> http.client.HTTPConnection:
        if self.target.socket is not None:
            return _UnixConnection(self.target.socket, self.target.peer_uid, self.timeout)
        parts = urllib.parse.urlsplit(self.target.server)
        if parts.scheme == "https":
            try:
                tls = ssl.create_default_context(cafile=str(self.target.ca) if self.target.ca else None)
            except (OSError, ssl.SSLError) as e:
                raise ClientError(f"TLS: cannot load the CA {self.target.ca}: {e} {self.target.blame()}") from None
            return http.client.HTTPSConnection(parts.hostname or "", parts.port, timeout=self.timeout, context=tls)
        return http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=self.timeout)

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
        url = urllib.parse.urlsplit(self.target.server).path.rstrip("/") + path
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
        connection = self._connection()
        try:
            connection.request(method, url, body=data, headers=sent)
            r = connection.getresponse()
            payload = _decode(r.read(), r.headers)
            status, response_headers = r.status, _lower(r.headers)
        except NotTheServer as e:
            raise ClientError(f"{e}: its token is not sent {self.target.blame()}") from None
        except ssl.SSLError as e:
            reason = getattr(e, "verify_message", None) or getattr(e, "reason", None) or str(e)
            raise ClientError(f"TLS: the server at {self.target.server} failed verification ({reason}) "
                              f"{self.target.blame()}") from None  # fmt: skip
        except (FileNotFoundError, ConnectionRefusedError) as e:
            if self.target.socket is None:
                raise self._unreachable(e) from None
            who = f"context {self.target.context}" if self.target.context else "the local default server"
            raise ClientError(
                f"the server of {who} is not running: nothing answers on its admin socket "
                f"{self.target.socket} ({e.strerror or e}); `dgw ls` lists the instances `dgw up` "
                "started, `dgw config get-contexts` the contexts"
            ) from None
        except (OSError, http.client.HTTPException) as e:
            raise self._unreachable(e) from None
        finally:
            connection.close()
        if 200 <= status < 300:
            return Response(status, response_headers, payload)
        raise ClientError(self._message(status, payload), status, payload)

    def _unreachable(self, error: BaseException) -> ClientError:
        reason = getattr(error, "strerror", None) or error
        return ClientError(f"cannot reach the dgw server at {self.target.server}: {reason} "
                           f"(is it running? --server, ${SERVER_ENV} or --context names another)")  # fmt: skip

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
                return f"{message} {self.target.blame()}" if status in (401, 403) else message
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
