"""Contexts, as kubectl has them: which server ``dgw`` talks to, with which token and CA.

They live in one file, ``$XDG_CONFIG_HOME/dgw/config.yaml`` (default
``~/.config/dgw/config.yaml``, 0600: it may hold a token)::

    current_context: up-default
    contexts:
      up-default:                 # written (and selected) by `dgw up`, removed by `dgw down`
        server: http://127.0.0.1:18001
        admin_socket: ~/.local/state/dgw/up/default/server/admin.sock
        token_file: ~/.local/state/dgw/up/default/server/admin.token
        ca: ~/.local/state/dgw/up/default/server/ca/ca.crt
        xds: 127.0.0.1:18000
        join: 127.0.0.1:18002
        instance: default
      prod:                       # `dgw config set-context prod --server ... --token-file ...`
        server: https://gw-cp.example.net:18001
        token_file: ~/.config/dgw/prod.token
        ca: ~/.config/dgw/prod-ca.crt

A file in the older flat shape (``server:``, ``token:`` or ``token_file:`` at the top)
reads as one context named ``default``, current unless another one is.

Every write (``dgw up``, ``dgw down``, ``dgw config``) reads, changes and replaces the
file under a lock, so two ``dgw up`` starting together both keep their context.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from xds_server.config import ConfigError
from xds_server.config.load import validate_model

CONTEXT_ENV = "DGW_CONTEXT"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@:-]{0,62}")
_LEGACY_KEYS = ("server", "token", "token_file")


class ContextError(Exception):
    """The contexts file or a context cannot be used; the message says what to do."""


def config_path(env: Mapping[str, str] = os.environ) -> Path:
    base = Path(env["XDG_CONFIG_HOME"]) if env.get("XDG_CONFIG_HOME") else Path.home() / ".config"
    return base / "dgw" / "config.yaml"


def check_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise ContextError(f"{name!r} is not a context name: letters, digits and _ . @ : - "
                           "(up to 63, starting with a letter or digit)")  # fmt: skip
    return name


def server_url(server: str) -> str:
    """``HOST:PORT`` or a URL → a URL without a trailing slash (http:// by default)."""
    server = server.strip()
    if "://" not in server:
        server = f"http://{server}"
    return server.rstrip("/")


class Context(BaseModel):
    """One server: its admin API, where its token comes from, its CA."""

    model_config = ConfigDict(extra="forbid")

    server: str = Field(description="the admin API: http://HOST:PORT or https://HOST:PORT")
    token: str | None = Field(default=None, description="the bearer token itself (shown redacted)")
    token_file: Path | None = Field(default=None, description="a file holding the token")
    admin_socket: Path | None = Field(
        default=None, description="the server's owner-only admin socket: requests go through it, "
                                  "and a token is sent only to the process on its other end")  # fmt: skip
    ca: Path | None = Field(default=None, description="the server's CA certificate (https, dgw ca, client-proxy)")
    xds: str | None = Field(default=None, description="the control plane's gRPC HOST:PORT")
    join: str | None = Field(default=None, description="the join port HOST:PORT (first certificates)")
    instance: str | None = Field(default=None, description="the `dgw up` instance that wrote it")
    state_dir: Path | None = Field(default=None, description="that instance's state directory")

    @field_validator("server")
    @classmethod
    def _server(cls, value: str) -> str:
        url = server_url(value)
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"{value!r} is not http://HOST:PORT or https://HOST:PORT")
        return url

    @model_validator(mode="after")
    def _one_token(self) -> Context:
        if self.token is not None and self.token_file is not None:
            raise ValueError("give token or token_file, not both")
        return self

    def path(self, field_name: str) -> Path | None:
        """A path field with ``~`` expanded."""
        value = getattr(self, field_name)
        return None if value is None else Path(value).expanduser()


class ContextsFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    current_context: str | None = None
    contexts: dict[str, Context] = Field(default_factory=dict)


def _legacy(data: dict[str, Any]) -> dict[str, Any]:
    """The flat shape (server/token/token_file at the top) as a context ``default``."""
    flat = {k: data.pop(k) for k in _LEGACY_KEYS if k in data}
    if flat:
        contexts = data.setdefault("contexts", {}) or {}
        data["contexts"] = contexts
        if isinstance(contexts, dict):
            contexts.setdefault("default", {"server": "http://127.0.0.1:18001", **flat})
            data.setdefault("current_context", "default")
    return data


def load(path: Path | None = None) -> ContextsFile:
    """The contexts in ``path`` (default: ``config_path()``); none when there is no file."""
    path = path or config_path()
    try:
        text = path.read_text()
    except FileNotFoundError:
        return ContextsFile()
    except OSError as e:
        raise ContextError(f"{path}: cannot read it ({e.strerror or e})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f":line {mark.line + 1}" if mark else ""
        raise ContextError(f"{path}{where}: not valid YAML ({getattr(e, 'problem', None) or e})") from None
    if data is None:
        return ContextsFile()
    if not isinstance(data, dict):
        raise ContextError(f"{path}: the file must be a mapping (current_context, contexts)")
    try:
        loaded = validate_model(ContextsFile, _legacy(data), str(path))
    except ConfigError as e:
        raise ContextError(str(e)) from None
    for name in loaded.contexts:
        if not _NAME.fullmatch(name):
            raise ContextError(f"{path}:contexts.{name}: not a context name (letters, digits and _ . @ : -)")
    return loaded


def _dump(contexts: ContextsFile) -> str:
    data = contexts.model_dump(mode="json", exclude_none=True)
    if not data.get("contexts"):
        data.pop("contexts", None)
    return yaml.safe_dump(data, sort_keys=False) if data else ""


@contextlib.contextmanager
def update(path: Path | None = None) -> Iterator[ContextsFile]:
    """Read the contexts, let the caller change them, write them back (0600, replaced
    atomically), all under a lock that every writer takes."""
    path = path or config_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    lock_fd = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX)
        contexts = load(path)
        yield contexts
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".config.yaml.")
        try:
            with os.fdopen(fd, "w") as f:
                f.write(_dump(contexts))
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    finally:
        os.close(lock_fd)


def selected(contexts: ContextsFile, flag: str | None, env: Mapping[str, str] = os.environ
             ) -> tuple[str | None, str]:
    """The context to use and why: ``--context``, ``$DGW_CONTEXT``, else the current
    one (None: no context). A named context that does not exist is an error."""
    for name, why in ((flag, "--context"), (env.get(CONTEXT_ENV), f"${CONTEXT_ENV}")):
        if name:
            if name not in contexts.contexts:
                known = ", ".join(sorted(contexts.contexts)) or "none"
                raise ContextError(f"{why} {name}: no such context in {config_path(env)} (contexts: {known})")
            return name, why
    current = contexts.current_context
    if current and current in contexts.contexts:
        return current, "the current context"
    return None, "no context"


def redacted(contexts: ContextsFile) -> dict[str, Any]:
    """The file's content as ``dgw config view`` shows it: tokens redacted."""
    data = contexts.model_dump(mode="json", exclude_none=True)
    for context in data.get("contexts", {}).values():
        if "token" in context:
            context["token"] = "REDACTED"
    return data
