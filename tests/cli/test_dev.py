"""The first ``./dev up`` says what it is doing while it installs (issue 10, point 7;
issue 22, item 10: pip's own steps, as they happen).

The real ``dev`` script runs in a scratch copy of the repo root whose ``python3``
makes a stand-in venv at once, so the test sees what a user sees without a real
install."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from .run import ROOT

# python3 -m venv .venv: a venv whose pip says what pip says (and fails while a file
# pip-fails lies beside it), and whose dgw echoes its arguments.
FAKE_PIP = """#!/bin/sh
echo "Obtaining file:///checkout"
echo "  Installing build dependencies: started"
echo "  Installing build dependencies: finished with status 'done'"
echo "Collecting grpcio>=1.85 (from data-gateway==0.1.0)"
echo "  Downloading grpcio-1.85.0-cp311-manylinux.whl (6.1 MB)"
echo "Building wheels for collected packages: data-gateway"
echo "Installing collected packages: grpcio, data-gateway"
if [ -e "$(dirname "$0")/pip-fails" ]; then echo "ERROR: no space left on device" >&2; exit 1; fi
echo "Successfully installed data-gateway-0.1.0 grpcio-1.85.0"
"""
FAKE_PYTHON = f"""#!/bin/sh
[ "$1 $2" = "-m venv" ] || exit 1
mkdir -p "$3/bin"
cat > "$3/bin/pip" <<'EOF'
{FAKE_PIP}EOF
printf '#!/bin/sh\\necho "dgw $*"\\n' > "$3/bin/dgw"
chmod +x "$3/bin/pip" "$3/bin/dgw"
"""


def _checkout(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    shutil.copy(ROOT / "dev", tmp_path / "dev")
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    bin_dir = tmp_path / "fake-bin"
    bin_dir.mkdir()
    (bin_dir / "python3").write_text(FAKE_PYTHON)
    (bin_dir / "python3").chmod(0o755)
    return tmp_path / "dev", {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}


def _dev(dev: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(dev), *args], capture_output=True, text=True, timeout=30, env=env)


def test_first_dev_up_says_it_is_installing(tmp_path: Path) -> None:
    dev, env = _checkout(tmp_path)

    first = _dev(dev, env, "up", "--log-level", "WARNING")
    again = _dev(dev, env, "up")

    assert first.returncode == 0, first.stderr
    assert "installing the project" in first.stderr
    assert "dev: pip: Installing build dependencies\n" in first.stderr
    assert "dev: pip: Collecting grpcio>=1.85 (from data-gateway==0.1.0)" in first.stderr
    assert "dev: pip: Installing collected packages: grpcio, data-gateway" in first.stderr
    assert "Downloading" not in first.stderr  # pip's steps, not each of its lines
    assert "installed in" in first.stderr
    assert "Successfully installed" in (tmp_path / ".venv" / "install.log").read_text()
    assert first.stdout == "dgw up --log-level WARNING\n"
    assert again.stderr == ""  # installed: no word about it


def test_a_failed_install_says_why_and_the_next_run_tries_again(tmp_path: Path) -> None:
    dev, env = _checkout(tmp_path)
    assert _dev(dev, env, "up").returncode == 0
    (tmp_path / ".venv" / ".installed").unlink()
    (tmp_path / ".venv" / "bin" / "pip-fails").touch()

    failed = _dev(dev, env, "up")
    (tmp_path / ".venv" / "bin" / "pip-fails").unlink()
    retried = _dev(dev, env, "up")

    assert failed.returncode == 1 and failed.stdout == ""
    assert "pip failed (the next ./dev run tries again)" in failed.stderr
    assert "ERROR: no space left on device" in failed.stderr
    assert retried.returncode == 0, retried.stderr
    assert "updating .venv" in retried.stderr and "installed in" in retried.stderr
    assert retried.stdout == "dgw up\n"
