"""The first ``./dev up`` says what it is doing while it installs (issue 10, point 7).

The real ``dev`` script runs in a scratch copy of the repo root whose ``python3``
makes a stand-in venv at once, so the test sees what a user sees without a real
install."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from .run import ROOT

FAKE_PYTHON = """#!/bin/sh
# python3 -m venv .venv: a venv whose pip does nothing and whose dgw echoes its args.
[ "$1 $2" = "-m venv" ] || exit 1
mkdir -p "$3/bin"
printf '#!/bin/sh\\nexit 0\\n' > "$3/bin/pip"
printf '#!/bin/sh\\necho "dgw $*"\\n' > "$3/bin/dgw"
chmod +x "$3/bin/pip" "$3/bin/dgw"
"""


def test_first_dev_up_says_it_is_installing(tmp_path: Path) -> None:
    shutil.copy(ROOT / "dev", tmp_path / "dev")
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    bin_dir = tmp_path / "fake-bin"
    bin_dir.mkdir()
    (bin_dir / "python3").write_text(FAKE_PYTHON)
    (bin_dir / "python3").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}

    first = subprocess.run([str(tmp_path / "dev"), "up", "--log-level", "WARNING"],
                           capture_output=True, text=True, timeout=30, env=env)
    again = subprocess.run([str(tmp_path / "dev"), "up"], capture_output=True, text=True, timeout=30, env=env)

    assert first.returncode == 0, first.stderr
    assert "installing the project" in first.stderr
    assert "installed in" in first.stderr
    assert first.stdout == "dgw up --log-level WARNING\n"
    assert again.stderr == ""  # installed: no word about it
