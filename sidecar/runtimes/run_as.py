"""Who a DAL runs as, and what it inherits.

A DAL's ``container_cmd`` is whatever the shard file says: under the process runtime
it is a command run on the gateway host, with the sidecar's own rights unless told
otherwise. ``--dal-user USER`` runs every DAL (and its health check) as that user, with
no supplementary groups; the sidecar needs root for it. Under Docker the container
runs as ``UID:GID`` of that user instead of its image's user.

Either way a DAL inherits none of the sidecar's environment (which may hold
``DGW_JOIN_TOKEN``, cloud credentials, ...): only ``PASSED_ENV``, ``HOME`` and what its
spec sets (its ``env`` and the ``DGW_*`` variables the sidecar gives every DAL), as a
container gets only what its spec sets.
"""

from __future__ import annotations

import os
import pwd
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

PASSED_ENV = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR")


class RunAsError(ValueError):
    """The user DALs should run as cannot be used; the message says why."""


@dataclass(frozen=True)
class RunAs:
    uid: int
    gid: int
    name: str
    home: str

    def popen(self) -> dict[str, Any]:
        """``subprocess``'s arguments to run a child as this user, with no other groups."""
        return {"user": self.uid, "group": self.gid, "extra_groups": []}

    @property
    def docker_user(self) -> str:
        return f"{self.uid}:{self.gid}"


def resolve(user: str) -> RunAs:
    """``--dal-user``: a user name or a numeric uid of this host."""
    try:
        entry = pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
    except (KeyError, OverflowError):
        raise RunAsError(f"--dal-user {user!r}: no such user on this host") from None
    if os.geteuid() != 0 and entry.pw_uid != os.geteuid():
        raise RunAsError(f"--dal-user {user!r}: only a sidecar running as root may run DALs as another user")
    if entry.pw_uid == 0:
        raise RunAsError(f"--dal-user {user!r} is root: name an unprivileged user (e.g. nobody)")
    return RunAs(entry.pw_uid, entry.pw_gid, entry.pw_name, entry.pw_dir)


def dal_environment(spec_env: Mapping[str, str], run_as: RunAs | None) -> dict[str, str]:
    """The whole environment of a DAL process (or its health check)."""
    env = {k: os.environ[k] for k in PASSED_ENV if k in os.environ}
    home = run_as.home if run_as is not None else os.environ.get("HOME")
    if home:
        env["HOME"] = home
    if run_as is not None:
        env["USER"] = env["LOGNAME"] = run_as.name
    return {**env, **spec_env}
