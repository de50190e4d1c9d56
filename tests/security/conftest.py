"""A real xds_server with its CA, on loopback, and the clients the control-plane
security tests talk to it with."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from dgw_api.v1 import gateway_pb2_grpc
from tests.hostile.corpus import GOOD
from tests.support.server import running_server
from xds_server.security.identity import SpiffeId, gateway_id
from xds_server.security.keys import make_csr, new_private_key, private_key_pem
from xds_server.server import XdsServer
from xds_server.settings import ServerSettings


@dataclass(frozen=True)
class ClientCert:
    key_pem: bytes
    chain_pem: bytes


def issue(server: XdsServer, identity: SpiffeId, node_id: str | None = None) -> ClientCert:
    """A certificate for ``identity`` straight from the server's CA (as `dgw ca issue` would)."""
    assert server.ca is not None
    key = new_private_key()
    chain = server.ca.sign(make_csr(key, identity), identity, common_name=node_id)
    return ClientCert(private_key_pem(key), chain)


def control_channel(server: XdsServer, cert: ClientCert | None) -> grpc.aio.Channel:
    """To the control port with ``cert``; with None, to the join port (no client certificate)."""
    assert server.ca is not None
    if cert is None:
        creds = grpc.ssl_channel_credentials(server.ca.bundle_pem)
        return grpc.aio.secure_channel(f"127.0.0.1:{server.join_port}", creds)
    creds = grpc.ssl_channel_credentials(server.ca.bundle_pem, cert.key_pem, cert.chain_pem)
    return grpc.aio.secure_channel(f"127.0.0.1:{server.xds_port}", creds)


def gateway_stub(channel: grpc.aio.Channel) -> gateway_pb2_grpc.GatewayStub:
    return gateway_pb2_grpc.GatewayStub(channel)  # type: ignore[no-untyped-call]


def node_cert(server: XdsServer, shard: str, node_id: str) -> ClientCert:
    return issue(server, gateway_id(shard), node_id)


def settings(tmp_path: Path, **more: object) -> ServerSettings:
    shards = tmp_path / "shards"
    shards.mkdir(exist_ok=True)
    (shards / "a.yaml").write_text(GOOD)
    (shards / "b.yaml").write_text(GOOD.replace("18080", "18090").replace("18081", "18091"))
    given: dict[str, object] = {
        "xds": "127.0.0.1:0", "admin": "127.0.0.1:0", "join": "127.0.0.1:0", "data_dir": tmp_path / "data",
    }
    return ServerSettings(config_dir=shards, **(given | more))  # type: ignore[arg-type]


@pytest.fixture
async def secure_server(tmp_path: Path) -> AsyncIterator[XdsServer]:
    async with running_server(settings(tmp_path)) as server:
        yield server
