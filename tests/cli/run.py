"""Run the real ``dgw`` (the venv's console script) and ``./dev`` as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DGW = str(Path(sys.executable).with_name("dgw"))
EXAMPLES = ROOT / "tests" / "examples"


def dgw(*args: str, env: dict[str, str] | None = None, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [DGW, *args], capture_output=True, text=True, timeout=timeout,
        env={**os.environ, **(env or {})}, stdin=subprocess.DEVNULL,
    )
