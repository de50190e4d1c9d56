"""Values a shard file took from the environment, hidden wherever people can read them.

Policy: the sidecar needs the real values to run its DALs, so the config it receives
(``WatchConfig``) is resolved; everything meant for people (the admin API, log lines,
rejection messages) shows each value that came from ``${VAR}`` as ``***``. A value
of under 4 characters is masked only where it is a whole scalar: masking every "1"
inside a URL would hide everything and protect nothing.
"""

from __future__ import annotations

from typing import Any

from xds_server.settings import Limits

from .errors import Problem

MASK = "***"
_SUBSTRING_CHARS = 4


def mask(text: str, secrets: frozenset[str]) -> str:
    if not secrets:
        return text
    if text in secrets:
        return MASK
    for value in sorted(secrets, key=len, reverse=True):
        if len(value) >= _SUBSTRING_CHARS:
            text = text.replace(value, MASK)
    return text


def mask_data(data: Any, secrets: frozenset[str]) -> Any:
    """A copy of a JSON-like value with every secret masked (in keys too)."""
    if not secrets:
        return data
    if isinstance(data, dict):
        return {mask(str(k), secrets): mask_data(v, secrets) for k, v in data.items()}
    if isinstance(data, list):
        return [mask_data(v, secrets) for v in data]
    if isinstance(data, str):
        return mask(data, secrets)
    if isinstance(data, bool) or data is None:
        return data
    return MASK if str(data) in secrets else data


def shown_problems(problems: list[Problem], secrets: frozenset[str], limits: Limits) -> list[Problem]:
    """Problems as people may see them: secrets masked, at most ``problems_per_file``."""
    shown = [Problem(p.file, mask(p.path, secrets), mask(p.message, secrets)) for p in problems]
    extra = len(shown) - limits.problems_per_file
    if extra > 0:
        shown = [
            *shown[: limits.problems_per_file],
            Problem(problems[0].file, "", f"… and {extra} more problems"),
        ]
    return shown
