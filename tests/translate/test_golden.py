"""Golden tests: each input config must produce exactly its stored Envoy resources.

Run ``pytest --update-golden`` to rewrite the outputs, then review their diff like code.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from .cases import IN, OUT, case_names, golden_files, render_case

SHARED_EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "runtime"  # copy of ../shared/examples


@pytest.mark.parametrize("name", case_names())
def test_golden(name: str) -> None:
    actual = render_case(name)
    stored = golden_files(name)
    if os.environ.get("DGW_UPDATE_GOLDEN"):
        for stale in stored.keys() - actual.keys():
            stored[stale].unlink()
        for file, text in actual.items():
            (OUT / file).write_text(text)
        return
    assert sorted(stored) == sorted(actual), "outputs differ; run pytest --update-golden and review"
    for file, text in actual.items():
        assert stored[file].read_text() == text, f"{file} differs; run pytest --update-golden and review"


def test_no_output_without_input() -> None:
    expected = {file for name in case_names() for file in golden_files(name)}
    orphans = sorted(p.name for p in OUT.iterdir() if p.name not in expected)
    assert not orphans, f"golden outputs with no input (delete them): {orphans}"


def test_every_shared_example_is_a_case_unchanged() -> None:
    for example in sorted(SHARED_EXAMPLES.glob("*.yaml")):
        case = IN / example.name
        assert case.exists(), f"shared example {example.name} has no golden case; copy it to {IN}"
        assert case.read_bytes() == example.read_bytes(), f"{case} differs from {example}"
