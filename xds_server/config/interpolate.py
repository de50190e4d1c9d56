"""docker-compose style ``${VAR}`` interpolation, applied to the file's text before YAML.

It must run on text: the seed writes ``{kind: branch, sha: ${DGW_CONFIG_VERSION}}``,
which is not valid YAML until the variable is replaced.

Forms: ``${VAR}``, ``${VAR:-default}`` (default when unset or empty),
``${VAR-default}`` (default when unset), ``${VAR:?message}`` / ``${VAR?message}``
(error when unset), ``$$`` for a literal ``$``. A ``$`` followed by anything else
is kept as written.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

_PATTERN = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)"
    r"(?:(?P<op>:-|-|:\?|\?)(?P<arg>[^}]*))?\}|(?P<bad>\{[^}]*\}?))"
)


class InterpolationError(ValueError):
    def __init__(self, line: int, message: str):
        self.line = line
        super().__init__(message)


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """Replace variables in ``text``; raise InterpolationError naming the line."""

    def replace(m: re.Match[str]) -> str:
        if m.group("escaped"):
            return "$"
        line = text.count("\n", 0, m.start()) + 1
        if m.group("bad") is not None:
            raise InterpolationError(
                line,
                f"{m.group(0)!r} is not a valid variable: use ${{NAME}} or "
                "${NAME:-default} (NAME is letters, digits and _), or $$ for a literal $",
            )
        name, op, arg = m.group("name"), m.group("op"), m.group("arg") or ""
        value = env.get(name)
        if op == ":-":
            return value if value else arg
        if op == "-":
            return value if value is not None else arg
        if op in (":?", "?") and (value is None or (op == ":?" and not value)):
            raise InterpolationError(line, f"variable {name} is required: {arg or 'it is not set'}")
        if value is None:
            raise InterpolationError(
                line,
                f"variable {name} is not set and has no default: set it in the environment "
                f"or write ${{{name}:-default}}",
            )
        return value

    return _PATTERN.sub(replace, text)
