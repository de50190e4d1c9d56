"""Resource versions are content hashes that every process must agree on: a restarted
server, and every replica of one, serve each golden case under the same versions, or
a reconnecting Envoy is sent (and re-applies) what it already holds. Python's hash
seed changes set and dict orders between processes, so each case is translated under
three seeds and the versions compared."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from testkit.procs import ROOT
from tests.translate.cases import case_names

_PRINT_VERSIONS = """
import json, sys
from tests.translate.cases import IN
from xds_server.cache.snapshot import build_snapshot
from xds_server.config import ConfigError, load_shard_text
from xds_server.translate import TranslateOptions, build_ir, to_resources
out = {}
for name in sys.argv[1:]:
    try:
        cfg = load_shard_text((IN / f"{name}.yaml").read_text(), name, env={})
    except ConfigError:
        continue
    try:
        resources = to_resources(build_ir(cfg, TranslateOptions(file=name)))
    except ConfigError:
        continue
    out[name] = build_snapshot(resources, None).versions()
print(json.dumps(out, sort_keys=True))
"""


def _versions(seed: str) -> dict[str, dict[str, str]]:
    done = subprocess.run(
        [sys.executable, "-c", _PRINT_VERSIONS, *case_names()], capture_output=True, text=True,
        env={**os.environ, "PYTHONHASHSEED": seed}, cwd=ROOT, timeout=120, check=True,
    )  # fmt: skip
    result: dict[str, dict[str, str]] = json.loads(done.stdout)
    return result


def test_every_case_has_the_same_versions_in_every_process() -> None:
    first, *others = (_versions(seed) for seed in ("1", "4", "10"))
    assert first, "no golden case translated"
    for other in others:
        assert other == first
