"""Values a shard file took from the environment, hidden wherever people can read them.

Policy: the sidecar needs the real values to run its DALs, so the config it receives
(``WatchConfig``) is resolved; everything meant for people (the admin API, log lines,
rejection messages, dry-run diffs) shows each value that came from ``${VAR}`` as
``***`` (``masking.py``: masked before anything is cut or diffed).
"""

from __future__ import annotations

from xds_server.settings import Limits

from .errors import Problem
from .masking import MASK, mask, mask_data

__all__ = ["MASK", "mask", "mask_data", "shown_problems"]


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
