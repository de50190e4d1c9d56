"""``dgw validate`` checks everything below a directory, refuses to validate nothing,
and refuses whatever ``dgw render`` and the server would refuse (issue 10, points 1, 2);
``dgw render`` of a deploy-desires-only file is an error (point 11)."""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from .run import EXAMPLES, dgw

ENV = {"DGW_CONFIG_VERSION": "0123abc"}


def test_validate_descends_into_sub_directories(tmp_path: Path) -> None:
    deep = tmp_path / "team" / "shards"
    deep.mkdir(parents=True)
    shutil.copy(EXAMPLES / "runtime" / "migration-shadow.yaml", deep / "good.yaml")
    (deep / "bad.yaml").write_text("proxy_config: {public_listeners: {api: {mode: smtp, path: 8080}}}\n")
    hidden = tmp_path / ".venv" / "lib"  # a tool's own YAML is not a shard
    hidden.mkdir(parents=True)
    (hidden / "tool.yaml").write_text("not: [a, shard]\n")

    proc = dgw("validate", str(tmp_path), env=ENV)

    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"{deep / 'good.yaml'}: ok" in proc.stdout
    assert f"{deep / 'bad.yaml'}:proxy_config.public_listeners.api.mode" in proc.stdout
    assert ".venv" not in proc.stdout


def test_validating_nothing_fails(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("no YAML here\n")

    proc = dgw("validate", str(tmp_path))

    assert proc.returncode == 1
    assert f"{tmp_path}: no .yaml or .yml files" in proc.stdout


def test_validate_refuses_what_render_refuses() -> None:
    # Loads (the keys are well-formed), but names providers the server does not know.
    path = EXAMPLES.parent / "translate" / "testdata" / "in" / "security-unknown-provider.yaml"

    validated = dgw("validate", str(path))
    rendered = dgw("render", str(path))

    assert validated.returncode == rendered.returncode == 1
    assert f"{path}:proxy_config.public_listeners.api.tls_creds" in rendered.stderr
    assert validated.stdout.splitlines() == rendered.stderr.splitlines()


def test_render_of_deploy_desires_only_is_an_error() -> None:
    proc = dgw("render", str(EXAMPLES / "deploy" / "kv-deploy-desires.yaml"), env=ENV)

    assert proc.returncode == 1
    assert proc.stdout == ""
    assert "holds only deploy_desires: there is nothing to render" in proc.stderr


def test_a_mistyped_key_gets_a_suggestion(tmp_path: Path) -> None:
    path = tmp_path / "kv.yaml"
    path.write_text("container_dals:\n  kv:\n    container_listners: {api: 8080}\n")

    proc = dgw("validate", str(path))

    assert proc.returncode == 1
    assert (f"{path}:container_dals.kv.container_listners: unknown key 'container_listners': "
            "did you mean 'container_listeners'?") in proc.stdout


def test_render_shows_the_effective_resilience_above_the_resources() -> None:
    case = Path(__file__).parents[1] / "translate" / "testdata" / "in" / "resilience-method-classes.yaml"
    proc = dgw("render", str(case), env=ENV)
    assert proc.returncode == 0, proc.stderr
    comments = [line for line in proc.stdout.splitlines() if line.startswith("#")]
    assert comments[0].startswith("# effective resilience (service tier 1 defaults")
    # The DAL's own keys win over the shard's, the shard's over the tier's.
    assert any("DAL kv: timeout 2s; retries 1 x 400ms per try" in line for line in comments)
    assert any("DAL kv-next: timeout 2s; retries 2 x 500ms per try" in line for line in comments)
    assert any("reads (2 method patterns) retried up to 1x, hedged" in line for line in comments)
    assert any("x-dgw-priority: low from spiffe://dgw.local/prod/ui" in line for line in comments)
    assert yaml.safe_load(proc.stdout)["routes"][0]["virtual_hosts"][0]["routes"][3]["name"] == "reads_low"
