"""How a process ended, in the words ``docker ps`` uses (a signal N is code 128+N)."""

from __future__ import annotations

import signal


def exit_code(returncode: int | None) -> int | None:
    """A ``subprocess`` return code (−N for signal N) as a shell/Docker exit code."""
    if returncode is None:
        return None
    return 128 - returncode if returncode < 0 else returncode


def describe_exit(returncode: int | None) -> str:
    """``exited with code 137 (SIGKILL)``; ``exit status unknown`` when there is none."""
    code = exit_code(returncode)
    if code is None:
        return "exit status unknown"
    text = f"exited with code {code}"
    if code > 128:
        try:
            text += f" ({signal.Signals(code - 128).name})"
        except ValueError:
            pass
    return text
