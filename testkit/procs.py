"""Child processes of a test or benchmark: started by us, in their own session, stopped
(TERM, then KILL) through their own process group. Nothing here looks a process up by name."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
from pathlib import Path

from testkit.ports import port_open

ROOT = Path(__file__).resolve().parents[1]


class ChildExited(RuntimeError):
    """A child we started exited while we still needed it; the message holds its log's tail."""


def raise_open_files_limit() -> int:
    """Soft RLIMIT_NOFILE up to the hard limit: 10,000 streams need as many sockets.
    Raised in this process, so every child inherits it. Never as ``preexec_fn``: Python
    runs its fork handlers only for a child with one, and gRPC's then restart its
    poller in the child, which dies of SIGABRT (``epoll_wait error: Bad file
    descriptor``) when Popen closes the poller's fd before exec (grpc/grpc#43055)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


class Child:
    """A process we started, in its own session; ``stop`` ends its process group."""

    def __init__(
        self, argv: list[str], log: Path, env: dict[str, str] | None = None, cwd: Path = ROOT
    ) -> None:
        self.argv = argv
        self.log_path = log
        log.parent.mkdir(parents=True, exist_ok=True)
        raise_open_files_limit()
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                argv, env={**os.environ, **(env or {})}, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True, cwd=cwd,
            )  # fmt: skip

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def check(self, what: str) -> None:
        """ChildExited (naming ``what`` and showing the log's tail) unless the child runs."""
        if not self.alive():
            raise ChildExited(f"{what} exited ({self.proc.returncode}); log {self.log_path}:\n{self.log_tail()}")

    def serving(self, port: int, what: str) -> bool:
        """Whether the child accepts connections on ``port``; ChildExited if it has exited."""
        self.check(what)
        return port_open(port)

    def signal(self, sig: int) -> None:
        if self.alive():
            os.killpg(self.proc.pid, sig)

    def stop(self, timeout: float = 5.0) -> None:
        if self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
