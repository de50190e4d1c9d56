"""The control channel authorizes by identity: a gateway gets only its own shard's
resources and reports only as itself; a client identity only the discovery shard;
without a certificate only SignCertificate; ``--insecure`` says so and stays local."""

from __future__ import annotations

import logging
from pathlib import Path

import aiohttp
import grpc
import pytest

from dgw_api.v1 import gateway_pb2
from testkit.ads_client import AdsCall, delta_request, make_node, sotw_request
from testkit.wait import eventually
from xds_server.resources import CLUSTER
from xds_server.security.identity import SpiffeId
from xds_server.server import XdsServer
from xds_server.translate import DISCOVERY_SHARD

from .conftest import ClientCert, control_channel, gateway_stub, issue, node_cert, settings

pytestmark = pytest.mark.slow


async def _ads(server: XdsServer, cert: ClientCert | None, shard: str, delta: bool) -> tuple[list[str], grpc.StatusCode, str]:
    """Names of the clusters one stream receives as (shard, n1), and how it ended."""
    async with control_channel(server, cert) as channel:
        call = AdsCall(channel, delta=delta)
        node = make_node("n1", shard)
        await call.send(delta_request(CLUSTER, node=node) if delta else sotw_request(CLUSTER, node=node))
        try:
            response = await call.read()
        except grpc.aio.AioRpcError as e:
            return [], e.code(), e.details() or ""
        assert response is not None
        await call.close()
        return [r.name if delta else r.type_url for r in response.resources], grpc.StatusCode.OK, ""


@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
async def test_gateway_gets_only_its_own_shard(
    secure_server: XdsServer, caplog: pytest.LogCaptureFixture, delta: bool
) -> None:
    cert = node_cert(secure_server, "a", "n1")
    own, code, _ = await _ads(secure_server, cert, "a", delta)
    assert code == grpc.StatusCode.OK and own

    caplog.set_level(logging.WARNING)
    other, code, details = await _ads(secure_server, cert, "b", delta)
    assert other == []
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert "may only receive shard 'a'" in details
    assert "event=unauthorized shard=b node=n1" in caplog.text


async def test_node_id_is_bound_by_the_certificate(secure_server: XdsServer) -> None:
    cert = node_cert(secure_server, "a", "n2")
    names, code, details = await _ads(secure_server, cert, "a", False)
    assert (names, code) == ([], grpc.StatusCode.PERMISSION_DENIED)
    assert "node 'n2', not 'n1'" in details


async def test_reports_and_watches_only_for_itself(secure_server: XdsServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    cert = node_cert(secure_server, "a", "n1")
    async with control_channel(secure_server, cert) as channel:
        stub = gateway_stub(channel)
        ack = await stub.Report(gateway_pb2.NodeReport(shard="a", node_id="n1"), timeout=5)
        assert ack.generation >= 1
        for shard, node in (("b", "n1"), ("a", "n9")):
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.Report(gateway_pb2.NodeReport(shard=shard, node_id=node), timeout=5)
            assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
            with pytest.raises(grpc.aio.AioRpcError) as info:
                async for _ in stub.WatchConfig(gateway_pb2.WatchRequest(shard=shard, node_id=node), timeout=5):
                    pass
            assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "event=unauthorized call=Report caller=spiffe://dgw.local/gateway/a#n1 shard=b" in caplog.text


async def test_without_a_certificate_only_sign_is_served(secure_server: XdsServer) -> None:
    names, code, details = await _ads(secure_server, None, "a", False)
    assert (names, code) == ([], grpc.StatusCode.UNAUTHENTICATED)
    assert "only SignCertificate" in details
    async with control_channel(secure_server, None) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await gateway_stub(channel).Report(gateway_pb2.NodeReport(shard="a", node_id="n1"), timeout=5)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    # The control port itself refuses the handshake of a client without a certificate.
    assert secure_server.ca is not None
    plain_tls = grpc.ssl_channel_credentials(secure_server.ca.bundle_pem)
    async with grpc.aio.secure_channel(f"127.0.0.1:{secure_server.xds_port}", plain_tls) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await gateway_stub(channel).Report(gateway_pb2.NodeReport(shard="a", node_id="n1"), timeout=5)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_client_identity_only_uses_the_discovery_shard(secure_server: XdsServer) -> None:
    cert = issue(secure_server, SpiffeId("dgw.local", "prod", "api"))
    async with control_channel(secure_server, cert) as channel:
        # The discovery shard has nothing yet: the stream is accepted and waits.
        call = AdsCall(channel)
        await call.send(sotw_request(CLUSTER, node=make_node("client-1", DISCOVERY_SHARD)))
        await eventually(
            lambda: any(s.node_id == "client-1" for s in secure_server.cache.node_status()),
            what="the client's stream on the discovery shard",
        )
        await call.close()
    names, code, details = await _ads(secure_server, cert, "a", False)
    assert (names, code) == ([], grpc.StatusCode.PERMISSION_DENIED)
    assert "client identity" in details


async def test_insecure_says_so_and_stays_on_loopback(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    server = XdsServer(settings(tmp_path, insecure=True))
    await server.start()
    try:
        assert "WARNING: --insecure" in caplog.text
        assert server.ca is None and server.join_port == 0
        healthz = f"http://127.0.0.1:{server.admin_port}/healthz"
        async with aiohttp.ClientSession() as http, http.get(healthz) as response:
            assert (await response.json())["insecure"] is True
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.xds_port}") as channel:
            ack = await gateway_stub(channel).Report(gateway_pb2.NodeReport(shard="b", node_id="x"), timeout=5)
            assert ack.generation >= 1
    finally:
        await server.stop()

    exposed = XdsServer(settings(tmp_path, insecure=True, xds="0.0.0.0:0"))
    with pytest.raises(ValueError, match="--insecure serves only loopback"):
        await exposed.start()
