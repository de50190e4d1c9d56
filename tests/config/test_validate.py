"""`dgw validate`: every shared example loads; every broken config is refused at the
right key path with a message that says what is allowed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from dgw.cli import main
from xds_server.config import ConfigError, load_any

HERE = Path(__file__).parent
# The seed's examples, copied byte for byte from ../shared/examples so a clone anywhere
# tests them; test_examples_copy_matches_shared keeps the copy honest.
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SHARED = Path(__file__).resolve().parents[3] / "shared" / "examples"
BROKEN = sorted((HERE / "broken").glob("*.yaml"))


def example_files() -> list[Path]:
    return sorted(EXAMPLES.glob("*/*.yaml"))


@pytest.fixture(autouse=True)
def _config_version(monkeypatch):
    monkeypatch.setenv("DGW_CONFIG_VERSION", "0123abc")
    monkeypatch.delenv("DGW_TEST_SURELY_UNSET_VAR", raising=False)


def test_examples_are_present():
    assert len(example_files()) >= 5, f"shared examples not found under {EXAMPLES}"


@pytest.mark.parametrize("path", example_files(), ids=lambda p: p.name)
def test_every_shared_example_loads_unchanged(path: Path):
    load_any(path)


def test_deploy_desires_interpolates_config_version():
    desires = load_any(EXAMPLES / "deploy" / "kv-deploy-desires.yaml").deploy_desires
    assert desires.version_set.artifacts["configs/main"].sha == "0123abc"
    assert desires.service_tier == 0
    assert [c.group for c in desires.consumers] == ["read-write", "read-only"]


def test_deploy_desires_without_variable_names_it(monkeypatch):
    monkeypatch.delenv("DGW_CONFIG_VERSION")
    with pytest.raises(ConfigError) as e:
        load_any(EXAMPLES / "deploy" / "kv-deploy-desires.yaml")
    assert "DGW_CONFIG_VERSION is not set" in str(e.value)
    assert "kv-deploy-desires.yaml:line 19" in str(e.value)


def test_corpus_is_large_enough():
    assert len(BROKEN) >= 30


@pytest.mark.parametrize("path", BROKEN, ids=lambda p: p.stem)
def test_broken_config_is_refused_at_its_key_path(path: Path):
    expected = path.read_text().splitlines()[0].removeprefix("# expect: ")
    with pytest.raises(ConfigError) as e:
        load_any(path)
    lines = [str(p) for p in e.value.problems]
    assert any(line.startswith(f"{path}:") and expected in line for line in lines), lines


def test_validate_cli_exit_codes_and_lines(capsys):
    # The other runtime examples use tls_creds, which the translator refuses for now.
    assert main(["validate", str(EXAMPLES / "runtime" / "migration-shadow.yaml")]) == 0
    capsys.readouterr()
    assert main(["validate", "-q", *map(str, BROKEN[:3])]) == 1
    out = capsys.readouterr().out.splitlines()
    assert all(line.startswith(str(HERE / "broken")) for line in out if line)


def test_validate_cli_never_prints_a_traceback(tmp_path):
    missing = tmp_path / "nope.yaml"
    proc = subprocess.run(
        [sys.executable, "-m", "dgw.cli", "validate", str(missing), *map(str, BROKEN)],
        capture_output=True, text=True, env={**os.environ, "DGW_CONFIG_VERSION": "x"},
    )
    assert proc.returncode == 1
    assert "Traceback" not in proc.stdout + proc.stderr
    assert f"{missing}: cannot read" in proc.stdout


def test_examples_copy_matches_shared() -> None:
    if not SHARED.is_dir():
        pytest.skip(f"no shared examples at {SHARED} to compare the copy with")
    shared = {p.relative_to(SHARED): p.read_bytes() for p in SHARED.glob("*/*.yaml")}
    copy = {p.relative_to(EXAMPLES): p.read_bytes() for p in EXAMPLES.glob("*/*.yaml")}
    assert copy == shared, f"tests/examples differs from {SHARED}: copy it again"
