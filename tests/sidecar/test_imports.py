"""The pure parts of the agent load without its I/O libraries, and the package has
no import cycle between its command line and its wiring."""

from __future__ import annotations

import subprocess
import sys

import pytest

HEAVY = ("docker", "grpc", "aiohttp")


@pytest.mark.parametrize("module", ["sidecar.plan", "sidecar.report", "sidecar.desired",
                                    "sidecar.cli"])
def test_pure_modules_do_not_load_io_libraries(module):
    code = (
        f"import sys, {module}\n"
        f"print(','.join(sorted(m for m in {HEAVY!r} if m in sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""


def test_main_does_not_import_cli():
    code = "import sys, sidecar.main; print('sidecar.cli' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
