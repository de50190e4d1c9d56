"""The tamper check with a real Docker engine, sidecar and Envoy: a DAL pinned to an
image's digest runs exactly that image; when an image of the same tag but another
digest appears (built locally, as a swapped build would) the sidecar refuses to run
it, the pinned container keeps serving, and ``dgw status`` says why."""

from __future__ import annotations

import io
import os
import uuid
from pathlib import Path

import pytest

from tests.cli.run import dgw

from .host import Host, docker_client, until

pytestmark = [pytest.mark.docker, pytest.mark.envoy]


def build(client, tag: str, base: str, word: str) -> str:
    """A local image FROM the sample DAL (no pull), differing only by a label."""
    image, _ = client.images.build(fileobj=io.BytesIO(f"FROM {base}\nLABEL dgw.tamper={word}\n".encode()),
                                   tag=tag, rm=True, forcerm=True)
    return image.id


def shard(h: Host, repo: str, tag: str, env: str) -> dict:
    probe = "http://127.0.0.1:$${DGW_LISTENER_ALPHA_PORT}/health"
    return {
        "proxy_config": {"public_listeners": {"alpha": {"mode": "http", "path": h.public["alpha"]}}},
        "container_dals": {"kv": {
            "image": tag, "container_listeners": {"alpha": 8080}, "env": {"X": env},
            "healthcheck": {"test": ["CMD-SHELL", f"python3 -m dals.sample.probe {probe}"],
                            "interval": "500ms", "timeout": "2s", "retries": 2},
        }},
        "deploy_desires": {
            "owners": [{"type": "pager", "value": "kv-oncall"}],
            "version_set": {"artifacts": {f"dals/{repo}": {"kind": "branch", "value": "main"}}},
        },
    }


def test_a_tampered_image_is_refused_and_the_pinned_one_keeps_serving(dal_image: str, tmp_path: Path):
    client = docker_client()
    repo = f"dgw-tamper-{uuid.uuid4().hex[:8]}"
    tag = f"{repo}:1"
    made: list[str] = []
    h = None
    try:
        made.append(pinned := build(client, tag, dal_image, "pinned"))
        h = Host(tmp_path, "docker")
        status, body = h.server.call("POST", f"/v1/artifacts/dals/{repo}",
                                     {"digest": pinned, "kind": "image", "source": tag})
        assert status == 200, body
        h.write(shard(h, repo, tag, "1"))
        h.start_sidecar()
        h.wait_healthy("kv", timeout=60)
        [container] = h._containers()
        assert container.attrs["Image"] == pinned  # exactly the pinned digest, by ID
        until(lambda: h.answered_by("alpha") == "kv", 30, what="kv answering through Envoy")

        made.append(other := build(client, tag, dal_image, "tampered"))  # same tag, another digest
        assert other != pinned and client.images.get(tag).id == other
        h.write(shard(h, repo, tag, "2"))  # a change that would recreate the DAL

        env = {**os.environ, "DGW_SERVER": f"http://127.0.0.1:{h.server.admin_port}",
               "DGW_TOKEN": h.server.token}

        def refused() -> str | None:
            out = dgw("status", env=env, timeout=30).stdout
            return out if "refused.dal.kv:" in out else None

        out = until(refused, 60, what=lambda: f"dgw status showing the refusal\n{h.log()[-3000:]}")
        line = next(x for x in out.splitlines() if "refused.dal.kv:" in x)
        assert f"image {tag} has digest {other[:19]}, but the version set pins dals/{repo} to {pinned[:19]}" in line
        assert "[owners: pager kv-oncall]" in line
        assert h.events("build_refused"), "the sidecar logs the refusal"
        # The pinned container is the one that still runs and serves.
        [still] = h._containers()
        assert still.id == container.id and still.status == "running" and still.attrs["Image"] == pinned
        assert h.answered_by("alpha") == "kv"
    finally:
        if h is not None:
            h.close()
        for image in made:
            try:
                client.images.remove(image, force=True)
            except Exception:
                pass
        client.close()
