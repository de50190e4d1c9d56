"""Interpolated values reach the sidecars (they run the DALs) and nobody else."""

from __future__ import annotations

import logging

import aiohttp

from tests.support.server import admin_headers
from xds_server.server import XdsServer

from .conftest import settings
from .corpus import SECRET, SECRET_SHARD


async def test_the_admin_api_and_logs_mask_what_the_sidecar_gets(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("DGW_DB_PASSWORD", SECRET)
    s = settings(tmp_path)
    (s.config_dir / "db.yaml").write_text(SECRET_SHARD)
    server = XdsServer(s)
    with caplog.at_level(logging.DEBUG):
        await server.start()
    try:
        shard = server.registry.shards["db"]
        assert SECRET in shard.config_yaml  # what WatchConfig sends to the sidecar
        async with aiohttp.ClientSession(headers=admin_headers(server)) as http:
            for path in ("/v1/shards/db", "/v1/shards"):
                async with http.get(f"http://127.0.0.1:{server.admin_port}{path}") as r:
                    assert r.status == 200
                    text = await r.text()
                    assert SECRET not in text
        assert "postgresql://app:***@127.0.0.1:5432" in shard.shown_yaml()
        assert SECRET not in caplog.text
    finally:
        await server.stop()


async def test_home_is_not_readable_from_a_shard(tmp_path):
    s = settings(tmp_path)
    (s.config_dir / "db.yaml").write_text(SECRET_SHARD.replace("${DGW_DB_PASSWORD}", "${HOME}"))
    server = XdsServer(s)
    await server.start()
    try:
        assert "variable 'HOME' may not be read" in server.registry.rejections["db"].errors[0]
    finally:
        await server.stop()
