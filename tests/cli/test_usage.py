"""What a new user types first: usage, --version, --help, option mistakes, pipes
(issue 10, points 8, 9, 11)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from .run import DGW, EXAMPLES, ROOT, dgw


def test_dev_without_arguments_prints_a_clean_usage() -> None:
    proc = subprocess.run([str(ROOT / "dev")], capture_output=True, text=True, timeout=30)

    assert proc.returncode == 2
    assert "./dev up" in proc.stdout and "./dev test" in proc.stdout
    assert "set -euo" not in proc.stdout


def test_version() -> None:
    proc = dgw("--version")

    assert proc.returncode == 0
    assert proc.stdout.startswith("dgw ")


def _help_entries(text: str) -> dict[str, str]:
    """Option → its help text, from argparse's --help output."""
    entries: dict[str, str] = {}
    current = ""
    for line in text.split("options:", 1)[1].splitlines():
        if line.startswith("  -"):
            signature, _, described = line.strip().partition("  ")
            current = next(t for t in signature.replace(",", " ").split() if t.startswith("--"))
            entries[current] = described.strip()
        elif current:
            entries[current] += " " + line.strip()
    return {k: " ".join(v.split()) for k, v in entries.items()}


def test_up_help_describes_every_option() -> None:
    entries = _help_entries(dgw("up", "--help").stdout)

    for option in ("--config-dir", "--xds", "--admin", "--runtime", "--node-id",
                   "--state-dir", "--log-level"):
        assert entries.get(option), f"{option} has no description: {entries}"


def test_bootstrap_help_shows_the_listen_default() -> None:
    assert "(default: 127.0.0.1:15000)" in _help_entries(dgw("bootstrap", "--help").stdout)["--listen"]


def test_shard_with_client_is_an_error() -> None:
    proc = dgw("bootstrap", "--shard", "kv", "--client", "kv.example/api",
               "--node-id", "n1", "--xds", "127.0.0.1:18000")

    assert proc.returncode == 2
    assert proc.stdout == ""
    assert "--shard and --client exclude each other" in proc.stderr


def test_a_reader_that_leaves_ends_the_command_quietly() -> None:
    # `dgw bootstrap ... | head -3`: the pipe is closed before dgw writes.
    child = subprocess.Popen(
        [DGW, "bootstrap", "--shard", "kv", "--node-id", "n1", "--xds", "127.0.0.1:18000"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    assert child.stdout is not None and child.stderr is not None
    child.stdout.close()
    stderr = child.stderr.read()
    child.wait(timeout=60)

    assert "Traceback" not in stderr and "BrokenPipeError" not in stderr, stderr
    assert child.returncode != 0


def test_log_level_is_accepted_after_the_sub_command(tmp_path: Path) -> None:
    proc = dgw("validate", str(EXAMPLES / "runtime" / "migration-shadow.yaml"), "--log-level", "WARNING")
    assert proc.returncode == 0, proc.stderr

    missing = tmp_path / "no-such-dir"
    proc = subprocess.run(
        [str(ROOT / "dev"), "up", "--log-level", "WARNING", "--config-dir", str(missing),
         "--state-dir", str(tmp_path / "state")],
        capture_output=True, text=True, timeout=60, env=os.environ,
    )
    assert "unrecognized arguments" not in proc.stderr
    assert proc.returncode == 1
    assert f"dgw up: config dir {missing} does not exist" in proc.stderr
