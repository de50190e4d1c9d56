"""Fixtures for the sidecar's integration tests: a gateway host per runtime."""

from __future__ import annotations

import subprocess

import pytest

from tests.support.procs import ROOT

from .host import Host, docker_client


@pytest.fixture(scope="session")
def dal_image() -> str:
    """The locally built sample DAL image (never pulled); skips without an engine."""
    try:
        docker_client().close()
    except Exception as e:
        pytest.skip(f"no Docker engine reachable ({e}); start one: deploy/docker/start-engine.sh")
    build = subprocess.run(
        [str(ROOT / "deploy/docker/build-dal-image.sh")], capture_output=True, text=True, timeout=600
    )
    if build.returncode != 0:
        pytest.fail(f"building the sample DAL image failed:\n{build.stdout}\n{build.stderr}")
    return "dgw-sample-dal:test"


@pytest.fixture(params=[pytest.param("docker", marks=pytest.mark.docker), "process"])
def host(request, tmp_path):
    if request.param == "docker":
        request.getfixturevalue("dal_image")
    h = Host(tmp_path, request.param)
    yield h
    h.close()
