"""Text from elsewhere made safe to print on one line of a terminal or a log.

Anything a caller sent (a name, a message, a reason) may hold CR/LF (a forged second
line), ANSI escapes (a cleared screen, hidden text) or Unicode bidi overrides (text
that reads backwards). ``printable`` writes each such character as a visible escape,
the way ``repr`` does, and leaves every other character as it is.
"""

from __future__ import annotations

import re

_SHORT = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(char: str) -> str:
    if char in _SHORT:
        return _SHORT[char]
    code = ord(char)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def printable(text: str, keep: str = "") -> str:
    """``text`` with every character that is not printable (C0 and C1 controls, DEL,
    line and paragraph separators, Unicode format characters such as bidi overrides)
    escaped as ``repr`` writes it (``\\n``, ``\\x1b``, ``\\u202e``), except those in ``keep`` (e.g. ``"\\n"`` for a
    multi-line block). A backslash is kept as it is: this is for reading, not parsing."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() or c in keep else _escape(c) for c in text)


_PLAIN = re.compile(r"[A-Za-z0-9_.:@/#+=,~-]*")


def log_value(text: str, limit: int = 253) -> str:
    """``text`` as one value of a ``key=value`` log line: as it is when it is a plain
    word, else in double quotes with quotes, backslashes and control characters
    escaped, so it can neither end the line nor pass for another key."""
    text = text[:limit]
    if _PLAIN.fullmatch(text):
        return text
    return '"' + printable(text.replace("\\", "\\\\").replace('"', '\\"')) + '"'
