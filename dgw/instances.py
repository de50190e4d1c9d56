"""Instances of the embedded gateway, like ``docker compose -p``: ``dgw up --name N``.

An instance has a name (default ``default``) and from it:

- a state directory, ``$XDG_STATE_HOME/dgw/up/NAME`` (``~/.local/state/dgw/up/NAME``;
  ``--state-dir`` puts it elsewhere): the server's data (config store, tokens, CA,
  admin socket), each shard's sidecar state, ``up.log`` and ``up.pid``;
- a context, ``up-NAME`` (``dgw/contexts.py``), written and selected while it runs;
- a node id unique to its state directory, ``NAME-<6 hex>``: the sidecars label their
  containers with it and name them ``dgw-SHARD-NODE-DAL``, so two instances, two
  checkouts or two users never share (or remove) a container on one Docker engine;
- its ports: the defaults for ``default``, free ones for any other name unless given.

``instance.json`` in the state directory records what the running ``dgw up`` chose
(ports, runtime, node id, shards and their DALs) for ``dgw ls``, ``dgw logs`` and
``dgw down``; ``up.pid`` its pid and start time, so a pid reused by another program
never counts as the instance.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .contexts import ContextError, load, selected

DEFAULT_NAME = "default"
CONTEXT_PREFIX = "up-"
RECORD_FILE = "instance.json"
PID_FILE = "up.pid"
LOG_FILE = "up.log"
UP_SERVER_DIR = "server"  # the server's data dir inside the state dir
_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,30}")


class InstanceError(Exception):
    """An instance cannot be found or named; the message says what exists."""


def check_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise InstanceError(f"--name {name!r}: an instance name is 1-31 of a-z, 0-9, _ and -, "
                            "starting with a letter or digit")  # fmt: skip
    return name


def state_home(env: Mapping[str, str] = os.environ) -> Path:
    return Path(env["XDG_STATE_HOME"]) if env.get("XDG_STATE_HOME") else Path.home() / ".local" / "state"


def instances_root(env: Mapping[str, str] = os.environ) -> Path:
    return state_home(env) / "dgw" / "up"


def default_state_dir(name: str, env: Mapping[str, str] = os.environ) -> Path:
    return instances_root(env) / name


def context_name(name: str) -> str:
    return f"{CONTEXT_PREFIX}{name}"


def node_id(name: str, state_dir: Path) -> str:
    """The instance's node id: its name and a digest of its state directory."""
    digest = hashlib.sha256(os.fsencode(state_dir.absolute())).hexdigest()[:6]
    return f"{name}-{digest}"


# --- what a running instance chose -----------------------------------------------------


class ShardRecord(BaseModel):
    model_config = ConfigDict(extra="ignore")

    listeners: dict[str, int | str] = Field(default_factory=dict)  # name → port (or socket path)
    dals: list[str] = Field(default_factory=list)


class Record(BaseModel):
    """``instance.json``: what ``dgw up`` chose for this instance."""

    model_config = ConfigDict(extra="ignore")

    name: str
    state_dir: Path
    config_dir: Path
    node_id: str
    runtime: str
    context: str
    admin: str
    admin_socket: Path | None = None
    xds: str
    join: str | None = None
    ca: Path | None = None
    started_at: str = Field(default_factory=lambda: dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))
    shards: dict[str, ShardRecord] = Field(default_factory=dict)


def write_record(record: Record) -> None:
    path = record.state_dir / RECORD_FILE
    tmp = path.with_name(f".{RECORD_FILE}.tmp")
    tmp.write_text(record.model_dump_json(indent=1) + "\n")
    os.replace(tmp, path)


def read_record(state_dir: Path) -> Record | None:
    try:
        return Record.model_validate_json((state_dir / RECORD_FILE).read_text())
    except (OSError, ValidationError):
        return None


# --- the instance's process ------------------------------------------------------------


def start_time(pid: int) -> str | None:
    """The process's start time since boot (``/proc/PID/stat`` field 22), which a later
    process given the same pid does not share."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields[19] if len(fields) > 19 and fields[0] != "Z" else None


def write_pid(state_dir: Path, pid: int) -> None:
    (state_dir / PID_FILE).write_text(f"{pid} {start_time(pid) or '?'}\n")


def running_pid(state_dir: Path) -> int | None:
    """The pid of the instance's ``dgw up``, if that process still runs."""
    try:
        pid_text, _, started = (state_dir / PID_FILE).read_text().strip().partition(" ")
        pid = int(pid_text)
    except (OSError, ValueError):
        return None
    now = start_time(pid)
    return pid if now is not None and (started in ("", "?") or started == now) else None


def clear_pid(state_dir: Path, pid: int) -> None:
    """Remove the pid file if it still names ``pid``."""
    path = state_dir / PID_FILE
    try:
        if path.read_text().split()[0] == str(pid):
            path.unlink()
    except (OSError, IndexError):
        pass


# --- finding instances ---------------------------------------------------------------


@dataclass(frozen=True)
class Instance:
    name: str
    state_dir: Path
    why: str  # how it was chosen: "--name a", "context up-a", ...

    @property
    def pid(self) -> int | None:
        return running_pid(self.state_dir)

    @property
    def record(self) -> Record | None:
        return read_record(self.state_dir)


def _from_context(context: str) -> tuple[str, Path] | None:
    found = load().contexts.get(context)
    if found is None or found.instance is None or found.state_dir is None:
        return None
    return found.instance, found.path("state_dir") or found.state_dir


def find(name: str | None, state_dir: Path | None, context: str | None) -> Instance:
    """The instance a command acts on: ``--state-dir``'s; ``--name``'s; the instance of
    ``--context`` (or ``$DGW_CONTEXT``, or the current context) when that is a ``dgw up``
    context; else ``default``."""
    if state_dir is not None:
        record = read_record(state_dir)
        return Instance(name or (record.name if record else DEFAULT_NAME), state_dir, f"--state-dir {state_dir}")
    if name is not None:
        check_name(name)
        known = _from_context(context_name(name))
        return Instance(name, known[1] if known else default_state_dir(name), f"--name {name}")
    try:
        chosen, why = selected(load(), context)
    except ContextError as e:
        raise InstanceError(str(e)) from None
    if chosen is not None and (known := _from_context(chosen)) is not None:
        return Instance(known[0], known[1], f"{why} {chosen}")
    return Instance(DEFAULT_NAME, default_state_dir(DEFAULT_NAME), "the default instance")


def every_instance() -> list[Instance]:
    """Every instance with a state directory in the default place or a context."""
    found: dict[Path, Instance] = {}
    root = instances_root()
    if root.is_dir():
        for d in sorted(root.iterdir()):
            if d.is_dir() and _NAME.fullmatch(d.name):
                found[d.absolute()] = Instance(d.name, d, "state dir")
    for context in load().contexts.values():
        if context.instance is not None and context.state_dir is not None:
            path = (context.path("state_dir") or context.state_dir).absolute()
            found.setdefault(path, Instance(context.instance, path, "context"))
    return sorted(found.values(), key=lambda i: (i.name, str(i.state_dir)))


def describe_others(exclude: Path | None = None) -> str:
    """``a (running), b (stopped)``: the instances there are, for error messages."""
    shown = [f"{i.name} ({'running' if i.pid else 'stopped'})" for i in every_instance()
             if exclude is None or i.state_dir.absolute() != exclude.absolute()]  # fmt: skip
    return ", ".join(shown) or "none"
