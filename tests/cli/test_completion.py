"""``dgw completion bash`` completes commands, options and their choices in a real bash."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from .run import dgw

CASES = {
    "dgw u": "up",
    "dgw up --run": "--runtime",
    "dgw up --runtime ": "auto docker process",
    "dgw bench ": "xds-fleet translate-scale data-path sidecar-recovery kv migrate kv-cpu rollout plan store etcd-client",
    "dgw --log-level WA": "WARNING",
    "dgw validate some": "",  # file names: bash's default completion
}


@pytest.mark.skipif(shutil.which("bash") is None, reason="no bash")
def test_bash_completion(tmp_path: Path) -> None:
    script = tmp_path / "dgw.bash"
    script.write_text(dgw("completion", "bash").stdout)
    probe = [f"source {script}"]
    for line in CASES:
        words = " ".join(f'"{w}"' for w in line.split(" "))
        probe.append(f'COMP_WORDS=({words}); COMP_CWORD=$((${{#COMP_WORDS[@]}}-1)); _dgw; echo "${{COMPREPLY[*]}}"')

    out = subprocess.run(["bash", "-c", "\n".join(probe)], capture_output=True, text=True, timeout=30)

    assert out.stderr == ""
    assert out.stdout.splitlines() == list(CASES.values())
