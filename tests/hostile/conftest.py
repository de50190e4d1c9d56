"""An in-process xds_server on loopback ports chosen by the kernel, for hostile clients."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.support.server import running_server
from xds_server.server import XdsServer
from xds_server.settings import Limits, ServerSettings

from .corpus import GOOD


def settings(tmp_path: Path, **limits: float) -> ServerSettings:
    shards = tmp_path / "shards"
    shards.mkdir(exist_ok=True)
    return ServerSettings(
        config_dir=shards, xds="127.0.0.1:0", admin="127.0.0.1:0",
        data_dir=tmp_path / "data", limits=Limits(**limits),  # type: ignore[arg-type]
        insecure=True,
    )


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[XdsServer]:
    s = settings(tmp_path)
    (s.config_dir / "kv.yaml").write_text(GOOD)
    async with running_server(s) as running:
        yield running
