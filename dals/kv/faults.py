"""A fault switch for tests: make the DAL answer errors on purpose.

``KV_FAULTS_FILE=PATH`` in the DAL's environment: while the file holds the word
``unavailable``, every KeyValue call (gRPC and HTTP) answers ``UNAVAILABLE`` ("fault
injected"); any other content, or no file, and calls are served again. The file is
looked at (its modification time) on each call, so a test flips the switch by writing
the file, with no restart. Health checks and the migration contract are not affected:
the DAL stays registered and routable, and only its answers fail (what a promotion
judged by error rate must notice).
"""

from __future__ import annotations

import os

from .errors import Code, KvError


class Faults:
    def __init__(self, path: str | None) -> None:
        self.path = path
        self._seen: tuple[int, int] | None = None
        self._unavailable = False

    @classmethod
    def from_env(cls, env: dict[str, str]) -> Faults:
        return cls(env.get("KV_FAULTS_FILE") or None)

    def check(self) -> None:
        """KvError(UNAVAILABLE) while the switch says so."""
        if self.path is None:
            return
        try:
            st = os.stat(self.path)
        except OSError:
            self._seen, self._unavailable = None, False
            return
        seen = (st.st_mtime_ns, st.st_size)
        if seen != self._seen:
            self._seen = seen
            try:
                with open(self.path) as f:
                    self._unavailable = f.read(64).strip().lower() == "unavailable"
            except OSError:
                self._unavailable = False
        if self._unavailable:
            raise KvError(
                Code.UNAVAILABLE, f"fault injected: {self.path} says unavailable (KV_FAULTS_FILE)"
            )
