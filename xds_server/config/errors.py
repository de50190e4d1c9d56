"""Configuration errors a user can act on: file, key path, what is wrong, what is allowed.

Whatever a user wrote may be huge (an alias bomb, a 1 MB string): a message quotes it
through ``quote`` only, and a problem's message is capped as a last guard, so an error
can never be bigger than a screenful.
"""

from __future__ import annotations

from dataclasses import dataclass

from .masking import mask

QUOTED_CHARS = 80  # Limits.quoted_chars; here so that every module can quote without settings
MESSAGE_CHARS = 1000


def quote(value: object, limit: int = QUOTED_CHARS) -> str:
    """``repr(value)`` cut to ``limit`` characters (a container is never fully rendered),
    the secrets in scope (``masking``) masked before the cut."""
    if isinstance(value, dict | list | tuple | set):
        kind = type(value).__name__
        return f"<a {kind} of {len(value)} items>"
    if isinstance(value, str | bytes):
        text = repr(mask(value if isinstance(value, str) else str(value)))
    else:
        text = mask(repr(value))
    if len(text) <= limit:
        return text
    return f"{text[: max(limit - 12, 8)]}…({len(text)} chars)"


def clip(message: str, limit: int = MESSAGE_CHARS) -> str:
    """``message`` with the secrets in scope masked, then cut to ``limit``."""
    message = mask(message)
    return message if len(message) <= limit else f"{message[:limit]}…(cut, {len(message)} chars)"


@dataclass(frozen=True)
class Problem:
    """One thing wrong with one key of one file."""

    file: str
    path: str
    message: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", clip(self.path, 200))
        object.__setattr__(self, "message", clip(self.message))

    def __str__(self) -> str:
        where = f"{self.file}:{self.path}" if self.path else self.file
        return f"{where}: {self.message}"


class ConfigError(Exception):
    """A configuration was rejected; ``problems`` lists every reason found."""

    def __init__(self, problems: list[Problem]):
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))
