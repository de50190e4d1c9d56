"""docker-compose style ``${VAR}`` interpolation, applied to the file's text before YAML.

It must run on text: the seed writes ``{kind: branch, sha: ${DGW_CONFIG_VERSION}}``,
which is not valid YAML until the variable is replaced.

Forms: ``${VAR}``, ``${VAR:-default}`` (default when unset or empty),
``${VAR-default}`` (default when unset), ``${VAR:?message}`` / ``${VAR?message}``
(error when unset), ``$$`` for a literal ``$``. A ``$`` followed by anything else
is kept as written.

Which variables may be read is the caller's policy (``allowed``): the server allows those
its ``allowed_env`` patterns name (default ``DGW_*``), never the platform's own. The values read from the environment are
returned too, so that whoever shows the config (admin API, logs) can mask them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

from .errors import clip, quote

_PATTERN = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)"
    r"(?:(?P<op>:-|-|:\?|\?)(?P<arg>[^}]*))?\}|(?P<bad>\{[^}]*\}?))"
)


class InterpolationError(ValueError):
    def __init__(self, line: int, message: str):
        self.line = line
        super().__init__(message)


def _line_of(text: str, offset: int) -> int:
    # Counted only for an error: per match, a big file of variables would be quadratic.
    return text.count("\n", 0, offset) + 1


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """Replace variables in ``text``; raise InterpolationError naming the line."""
    return interpolate_values(text, env)[0]


def interpolate_values(
    text: str, env: Mapping[str, str], allowed: Callable[[str], bool] | None = None
) -> tuple[str, frozenset[str]]:
    """The interpolated text and the non-empty values that came from ``env``.

    A variable ``allowed`` refuses is an error even when it has a default: the file
    asks for something it may not have, and the author must learn it.
    """
    values: set[str] = set()

    def replace(m: re.Match[str]) -> str:
        if m.group("escaped"):
            return "$"
        if m.group("bad") is not None:
            raise InterpolationError(
                _line_of(text, m.start()),
                f"{quote(m.group(0))} is not a valid variable: use ${{NAME}} or "
                "${NAME:-default} (NAME is letters, digits and _), or $$ for a literal $",
            )
        name, op, arg = m.group("name"), m.group("op"), m.group("arg") or ""
        if allowed is not None and not allowed(name):
            raise InterpolationError(
                _line_of(text, m.start()),
                f"variable {quote(name)} may not be read: only those the server's --allow-env "
                "patterns name (default DGW_*), and never the platform's own (DGW_TOKEN, ...)",
            )
        value = env.get(name)
        if value:
            values.add(value)
        if op == ":-":
            return value if value else arg
        if op == "-":
            return value if value is not None else arg
        if op in (":?", "?") and (value is None or (op == ":?" and not value)):
            raise InterpolationError(
                _line_of(text, m.start()), f"variable {name} is required: {clip(arg, 200) if arg else 'it is not set'}"
            )
        if value is None:
            raise InterpolationError(
                _line_of(text, m.start()),
                f"variable {name} is not set and has no default: set it in the environment "
                f"or write ${{{name}:-default}}",
            )
        return value

    return _PATTERN.sub(replace, text), frozenset(values)
