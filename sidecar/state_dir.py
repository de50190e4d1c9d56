"""The sidecar's state directory, checked before anything is written there.

The sidecar (often root) keeps the host's private key, the SDS and Envoy admin
sockets, the last config (resolved secrets) and the DALs' logs in
``STATE_DIR/SHARD-NODE``. A directory another user can write would let them plant a
symbolic link where a log goes (and have root append to any file) or replace a
socket. So, as OpenSSH does with ``StrictModes``:

- ``STATE_DIR`` and every directory above it must belong to this user or root and be
  writable by no one else (a sticky directory such as ``/tmp`` may be above it);
- ``SHARD-NODE`` must be a real directory (not a symbolic link) of this user; it is
  made (or tightened to) 0711: others may pass through it to the listeners' sockets in
  ``sockets/`` but not list it, and every file the sidecar makes in it is 0600.

A directory that fails is refused with a message saying which and what to change.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from common.names import LISTENER_SOCKETS

from .errors import SidecarError

NODE_DIR_MODE = 0o711
SOCKETS_DIR_MODE = 0o755


class StateDirError(SidecarError):
    """The state directory cannot be trusted; the message says why and what to do."""


def prepare(root: Path, node_dir: Path) -> None:
    """Check ``root`` (``--state-dir``) and make or check ``node_dir`` inside it."""
    root = root.absolute()
    root.mkdir(mode=0o711, parents=True, exist_ok=True)
    _check_tree(root.resolve())
    try:
        node_dir.mkdir(mode=NODE_DIR_MODE)
    except FileExistsError:
        pass
    info = os.lstat(node_dir)
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        raise StateDirError(f"state dir {node_dir} is not a directory (a symbolic link?): remove it, "
                            "the sidecar makes it")  # fmt: skip
    if info.st_uid != os.geteuid():
        raise StateDirError(f"state dir {node_dir} belongs to uid {info.st_uid}, not to the sidecar's "
                            f"user ({os.geteuid()}): remove it or give it to that user")  # fmt: skip
    os.chmod(node_dir, NODE_DIR_MODE, follow_symlinks=False)
    sockets = node_dir / LISTENER_SOCKETS  # listeners on Unix sockets (path: NAME.sock)
    try:
        sockets.mkdir(mode=SOCKETS_DIR_MODE)
    except FileExistsError:
        if not stat.S_ISDIR(os.lstat(sockets).st_mode):
            raise StateDirError(f"{sockets} is not a directory: remove it, the sidecar makes it") from None


def _check_tree(directory: Path) -> None:
    """``directory`` and each one above it: of this user or root, writable by no one
    else (sticky directories excepted above the state dir itself)."""
    me = os.geteuid()
    for i, path in enumerate([directory, *directory.parents]):
        info = os.stat(path)
        owner_ok = info.st_uid in (me, 0)
        shared = info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
        if not owner_ok:
            raise StateDirError(f"{path} (the state dir{' or above it' if i else ''}) belongs to uid "
                                f"{info.st_uid}: the sidecar keeps keys and sockets there; use a "
                                "directory of its own user or root")  # fmt: skip
        if shared and (i == 0 or not info.st_mode & stat.S_ISVTX):
            raise StateDirError(f"{path} (the state dir{' or above it' if i else ''}) is writable by "
                                f"others (mode {stat.S_IMODE(info.st_mode):o}): the sidecar keeps keys and "
                                f"sockets there; use a directory only its user can write (chmod go-w {path})")  # fmt: skip
