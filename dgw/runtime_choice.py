"""Where ``dgw up`` runs the DALs when the user did not say: Docker when an engine
answers and holds every image the shards name, local processes otherwise — and why.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import docker

from sidecar.runtimes.base import RuntimeUnavailable
from sidecar.runtimes.docker import connect
from xds_server.config import ShardFile

BUILD_HINT = "deploy/docker/build-dal-image.sh"


@dataclass(frozen=True)
class RuntimeChoice:
    runtime: Literal["docker", "process"]
    reason: str


def needed_images(shards: list[ShardFile]) -> tuple[set[str], list[str]]:
    """The images the shards' DALs name, and the DALs that name none (those can run
    only as local processes)."""
    images = {d.image for s in shards for d in s.container_dals.values() if d.image}
    without = sorted(n for s in shards for n, d in s.container_dals.items() if not d.image)
    return images, without


def choose_runtime(shards: list[ShardFile]) -> RuntimeChoice:
    """Docker if it can run every DAL of ``shards`` here, else processes (with why)."""
    images, without = needed_images(shards)
    if without:
        return RuntimeChoice("process", f"DAL {', '.join(without)} has no image")
    try:
        client = connect()
    except RuntimeUnavailable as e:
        return RuntimeChoice("process", f"{e}; start one with deploy/docker/start-engine.sh")
    try:
        missing = sorted(i for i in images if not _has_image(client, i))
    finally:
        client.close()
    if missing:
        return RuntimeChoice(
            "process", f"no image {', '.join(missing)}; build it with {BUILD_HINT} {missing[0]}"
        )
    return RuntimeChoice("docker", "engine reachable, images present")


def _has_image(client: docker.DockerClient, image: str) -> bool:
    try:
        client.images.get(image)
    except docker.errors.ImageNotFound:
        return False
    return True
