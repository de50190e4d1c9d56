"""Bounded request load through gateways, counted, and CPU load from busy processes.

``Traffic`` sends a GET to each URL every ``every_s`` from its own thread (a new
connection each time, as independent clients would), until stopped or until its
bounds (count, seconds) are reached, and keeps every failure: a status other than 200,
or no answer. ``busy_cpus`` keeps both cores busy with processes of its own, bounded
in time, so a race that load widens shows up.
"""

from __future__ import annotations

import contextlib
import http.client
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from testkit.procs import Child


@dataclass
class Failure:
    url: str
    at: float
    what: str


@dataclass
class Traffic:
    urls: list[str]
    every_s: float = 0.05
    max_requests: int = 20_000
    max_seconds: float = 240.0
    sent: int = 0
    failures: list[Failure] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> Traffic:
        for url in self.urls:
            thread = threading.Thread(target=self._run, args=(url,), daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def _run(self, url: str) -> None:
        parts = urlsplit(url)
        deadline = time.monotonic() + self.max_seconds
        next_at = time.monotonic()
        while not self._stop.is_set() and time.monotonic() < deadline:
            with self._lock:
                if self.sent >= self.max_requests:
                    return
                self.sent += 1
            what = _get(parts.hostname or "", parts.port or 80, parts.path or "/")
            if what:
                with self._lock:
                    self.failures.append(Failure(url, time.time(), what))
            next_at += self.every_s
            self._stop.wait(max(0.0, next_at - time.monotonic()))

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(10)

    def summary(self) -> str:
        shown = "; ".join(f"{f.url} at {time.strftime('%H:%M:%S', time.localtime(f.at))}"
                          f".{int(f.at * 1000) % 1000:03d}: {f.what}" for f in self.failures[:10])  # fmt: skip
        return f"{len(self.failures)} of {self.sent} requests failed: {shown}"


def _get(host: str, port: int, path: str) -> str:
    """'' when answered 200, else what went wrong."""
    connection = http.client.HTTPConnection(host, port, timeout=5)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        body = response.read()
        if response.status != 200:
            return f"{response.status} {body[:80]!r}"
        return ""
    except OSError as e:
        return f"{type(e).__name__}: {e}"
    finally:
        connection.close()


@contextlib.contextmanager
def busy_cpus(workdir: Path, count: int = 2, seconds: float = 300.0) -> Iterator[None]:
    """``count`` processes spinning for at most ``seconds`` (stopped on the way out)."""
    spin = f"import time\nend = time.monotonic() + {seconds}\nwhile time.monotonic() < end: pass\n"
    children = [Child([sys.executable, "-c", spin], workdir / f"busy-{i}.log") for i in range(count)]
    try:
        yield
    finally:
        for child in children:
            child.kill()

