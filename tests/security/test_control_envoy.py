"""End to end on loopback: a real sidecar gets its first certificate with a join
token, serves it to a real Envoy over its local SDS, and that Envoy bootstraps over
mTLS to the xds_server and gets its shard's config. With short lifetimes, renewals
rotate the sidecar's channel and Envoy's certificates (new serials in ``/certs``)
while Envoy's ADS stream stays up. Nothing secret reaches the log."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from pathlib import Path

import pytest

from envoy_proxy.blocking import admin_text
from sidecar.config import SidecarSettings
from sidecar.main import envoy_admin_socket, run_sidecar
from testkit.ports import free_port
from testkit.wait import eventually
from xds_server.resources import LISTENER
from xds_server.server import XdsServer

from .conftest import settings

pytestmark = [pytest.mark.envoy, pytest.mark.slow]

SHARD = """
proxy_config:
  public_listeners:
    db: {{mode: tcp, path: {port}, tls_creds: metatron}}
network_dals:
  pg:
    listeners: {{db: "tcp://127.0.0.1:{backend}"}}
    mode: static
"""
CERT_TTL_S = 6.0  # renewed every 3 s: two renewals within the test


def _certs(admin: Path) -> set[str]:
    """Serial numbers of every certificate Envoy holds (listener and xDS client)."""
    data = json.loads(admin_text(admin, "/certs"))
    return {
        chain["serial_number"]
        for cert in data.get("certificates", [])
        for chain in cert.get("cert_chain", [])
    }


def _acked_listeners(server: XdsServer) -> list[str]:
    return [
        s.type_status(LISTENER).acked_version or ""
        for s in server.cache.node_status()
        if s.shard == "sec" and s.node_id == "n1" and s.type_status(LISTENER).acked_version
    ]


async def test_sidecar_and_envoy_over_mtls_with_renewals(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    s = settings(tmp_path, cert_ttl_s=CERT_TTL_S)
    (s.config_dir / "sec.yaml").write_text(SHARD.format(port=free_port(), backend=free_port()))
    server = XdsServer(s)
    await server.start()
    token = server.create_join_token("sec")
    sidecar = SidecarSettings(
        server=f"127.0.0.1:{server.xds_port}", join_server=f"127.0.0.1:{server.join_port}",
        trust_bundle=s.ca_directory() / "ca.crt", join_token=token,  # type: ignore[arg-type]
        shard="sec", node_id="n1", runtime="process", state_dir=tmp_path / "st",
        report_every_s=1.0,
    )
    admin = envoy_admin_socket(sidecar)
    stop = asyncio.Event()
    agent = asyncio.create_task(run_sidecar(sidecar, stop))
    try:
        await eventually(lambda: agent.done() or _acked_listeners(server), 30,
                         what="Envoy's listeners ACKed over mTLS")
        assert not agent.done(), agent.exception()
        connected = [s.connected_since for s in server.cache.node_status() if s.node_id == "n1"]
        first = await asyncio.to_thread(_certs, admin)
        assert first, "Envoy holds no certificate"

        # Renewals: new serials in Envoy (its xDS client certificate and the listener's).
        await eventually(lambda: agent.done() or len(_certs(admin) - first) >= 1, 20,
                         what="a renewed certificate in Envoy's /certs")
        await eventually(lambda: "event=control_rotated" in caplog.text, 10,
                         what="the sidecar's control channel re-created with the new certificate")
        assert [s.connected_since for s in server.cache.node_status() if s.node_id == "n1"] == connected
        assert "event=certificate_signed shard=sec node=n1" in caplog.text
        assert "via=renewal" in caplog.text
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(agent, 30)
        await server.stop()

    key_file = tmp_path / "st" / "sec-n1" / "identity" / "key.pem"
    assert key_file.stat().st_mode & 0o777 == 0o600
    key = key_file.read_text()
    logged = caplog.text
    assert token not in logged and "PRIVATE KEY" not in logged and key not in logged
    envoy_log = "".join(p.read_text(errors="replace") for p in (tmp_path / "st").rglob("*.log"))
    assert token not in envoy_log and "PRIVATE KEY" not in envoy_log
