"""Structured logs: one event per line as ``event=NAME key=value ...``.

Every line of the agent carries its shard and node; DAL lines carry ``dal=``.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

_BARE = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._:/-+@,[]")


def _value(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        v = f"{v:.3f}".rstrip("0").rstrip(".")
    text = str(v)
    if text and all(c in _BARE for c in text):
        return text
    return json.dumps(text, ensure_ascii=False)


def kv(**fields: Any) -> str:
    return " ".join(f"{k}={_value(v)}" for k, v in fields.items())


class EventLog:
    """A logger bound to fixed fields (shard, node, ...)."""

    def __init__(self, logger: logging.Logger | str, **bound: Any):
        self._log = logging.getLogger(logger) if isinstance(logger, str) else logger
        self._bound = bound

    def bind(self, **more: Any) -> EventLog:
        return EventLog(self._log, **{**self._bound, **more})

    def _emit(self, level: int, event: str, fields: dict[str, Any]) -> None:
        if self._log.isEnabledFor(level):
            self._log.log(level, "%s", kv(event=event, **self._bound, **fields))

    def debug(self, event: str, **fields: Any) -> None:
        self._emit(logging.DEBUG, event, fields)

    def info(self, event: str, **fields: Any) -> None:
        self._emit(logging.INFO, event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._emit(logging.WARNING, event, fields)

    def error(self, event: str, **fields: Any) -> None:
        self._emit(logging.ERROR, event, fields)


def tail_lines(path: Path, lines: int, start: int = 0) -> list[str]:
    """The last ``lines`` lines of a log file written since byte offset ``start``
    (where the current run began), for crash reports."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(start, f.tell() - 64 * 1024))
            data = f.read()
    except OSError:
        return []
    return [line for line in data.decode("utf-8", "replace").splitlines() if line][-lines:]
