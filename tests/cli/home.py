"""A HOME of a test's own, as a user's looks after earlier runs (issue 22): a stale
``~/.local/share/dgw/`` with a CA (``dgw ca init``), an admin token of a server long
gone and a dead admin socket. ``dgw`` runs there with nothing of the real user's or
the session's (no ``XDG_*``, no ``DGW_*``) and no Docker engine unless asked. (The CA
is made in-process: the files ``dgw ca init`` writes, a second sooner.)"""

from __future__ import annotations

import os
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.support.procs import Child
from xds_server.security.ca import CertificateAuthority

from .run import DGW

NO_ENGINE = "unix:///nonexistent/docker.sock"
SESSION_TAG = "DGW_TEST_SESSION"  # tests/conftest.py: what the session kills if a test leaks it
STALE_TOKEN = "dgw_000000000000_stale-token-of-a-server-long-gone-00000000000"


@dataclass(frozen=True)
class Home:
    path: Path
    env: dict[str, str]

    @property
    def stale(self) -> Path:
        return self.path / ".local" / "share" / "dgw"

    @property
    def config(self) -> Path:
        return self.path / ".config" / "dgw" / "config.yaml"

    def state_dir(self, instance: str) -> Path:
        return self.path / ".local" / "state" / "dgw" / "up" / instance

    def dgw(self, *args: str, timeout: float = 60.0, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([DGW, *args], capture_output=True, text=True, timeout=timeout,
                              env={**self.env, **env}, stdin=subprocess.DEVNULL, cwd=self.path)  # fmt: skip

    def spawn(self, args: list[str], log: Path) -> Child:
        """``dgw ARGS`` in the background. (A Child adds the session's environment; the
        XDG directories are set to this HOME's defaults, where dgw would look anyway.)"""
        defaults = {"XDG_CONFIG_HOME": self.path / ".config", "XDG_STATE_HOME": self.path / ".local" / "state",
                    "XDG_DATA_HOME": self.path / ".local" / "share"}  # fmt: skip
        return Child([DGW, *args], {**self.env, **{k: str(v) for k, v in defaults.items()}}, log=log)


def stale_home(root: Path, docker: bool = False) -> Home:
    home = root / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("XDG_", "DGW_")) or k == SESSION_TAG}  # fmt: skip
    env["HOME"] = str(home)
    if not docker:
        env["DOCKER_HOST"] = NO_ENGINE
    made = Home(home, env)
    CertificateAuthority.init(made.stale / "ca")  # what `dgw ca init` leaves, made in-process
    made.stale.joinpath("admin.token").write_text(STALE_TOKEN + "\n")
    made.stale.joinpath("admin.token").chmod(0o600)
    with socket.socket(socket.AF_UNIX) as dead:  # a socket file nobody listens on any more
        dead.bind(str(made.stale / "admin.sock"))
    return made
