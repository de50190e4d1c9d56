"""``dgw migrate``'s own checks, made before it asks the server anything: a careless
flag is one line naming what is allowed (and nothing is sent)."""

from __future__ import annotations

import pytest

from dgw.cli import main

NOWHERE = ["--server", "http://127.0.0.1:9", "--token", "t"]  # nothing listens: nothing may be sent


@pytest.mark.parametrize(("argv", "words"), [
    # An empty --steps (a shell variable left unset) must not promote at once.
    (["promote", "--steps", ""], "--steps '': percents separated by commas, e.g. 1,10,50,100"),
    (["promote", "--steps", "10,,100", "--interval", "5s"], "--steps 10,,100: percents separated by commas"),
    # Points, as the flag says, not the API's fraction.
    (["promote", "--max-error-increase", "-1"], "--max-error-increase -1: percentage points from 0 to 100"),
    (["promote", "--max-error-increase", "150"], "--max-error-increase 150: percentage points from 0 to 100"),
])  # fmt: skip
def test_careless_flags_are_refused_before_anything_is_sent(argv: list[str], words: str,
                                                            capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    assert main([*NOWHERE, "migrate", "kv", *argv]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"dgw migrate: {words}") and err.count("\n") == 1, err
    assert "cannot reach" not in err
