"""A private ``redis-server`` on a loopback port, for tests and benchmarks that must
stop or pause their Redis without touching the shared one on 6379."""

from __future__ import annotations

import shutil
from pathlib import Path

from testkit.ports import free_port, port_open
from testkit.procs import Child
from testkit.wait import wait_until


class RedisServer:
    """``redis-server`` on 127.0.0.1:``port`` (a free one by default), nothing kept on
    disk; ``stop`` ends it by its PID and ``start`` brings it back on the same port."""

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        self.binary = binary
        self.workdir = workdir
        self.port = port or free_port()
        self.child: Child | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> RedisServer:
        self.starts += 1
        self.child = Child(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.workdir)],
            self.workdir / f"redis-{self.port}-{self.starts}.log",
        )  # fmt: skip
        child = self.child
        wait_until(lambda: child.serving(self.port, "redis-server"), timeout, what=f"redis-server on {self.port}")
        return self

    def stop(self) -> None:
        if self.child is not None:
            self.child.stop()
            wait_until(lambda: not port_open(self.port), 10, what=f"redis-server on {self.port} to close")
