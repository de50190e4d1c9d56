"""The shard file's JSON Schema and reference page are generated from the models and
kept current (``dgw schema --write``); the demo shard points editors at the schema."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from dgw import schema
from xds_server.config.interpolate import interpolate

from .run import EXAMPLES, ROOT, dgw

DEMO = ROOT / "deploy" / "demo" / "shards" / "demo.yaml"


def test_published_schema_and_reference_are_current() -> None:
    stale = "stale: run `dgw schema --write` and commit the result"
    assert schema.SCHEMA_FILE.read_text() == schema.schema_text(), f"{schema.SCHEMA_FILE} is {stale}"
    assert schema.REFERENCE_FILE.read_text() == schema.reference_markdown(), f"{schema.REFERENCE_FILE} is {stale}"


def test_every_key_has_a_meaning() -> None:
    missing = [
        f"{m.__name__}.{key}"
        for m in schema.models()
        for key in m.model_fields
        if key not in schema.MEANINGS.get(m.__name__, {})
    ]
    assert not missing, f"add these to dgw/schema.py MEANINGS: {missing}"


def test_dgw_schema_prints_the_schema() -> None:
    proc = dgw("schema")

    assert proc.returncode == 0
    assert json.loads(proc.stdout)["title"] == "Data Gateway shard file"


def test_demo_shard_names_the_schema_for_editors() -> None:
    first = DEMO.read_text().splitlines()[0]
    assert first.startswith("# yaml-language-server: $schema=")
    assert (DEMO.parent / first.split("$schema=", 1)[1]).resolve() == schema.SCHEMA_FILE


@pytest.mark.parametrize("path", [DEMO, *sorted(EXAMPLES.glob("*/*.yaml"))], ids=lambda p: p.name)
def test_schema_accepts_every_example(path: Path) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    text = interpolate(path.read_text(), {**os.environ, "DGW_CONFIG_VERSION": "0123abc"})
    jsonschema.validate(yaml.safe_load(text), json.loads(schema.SCHEMA_FILE.read_text()))
