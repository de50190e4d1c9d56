"""Least privilege on the control channel (issue #17): a node registers only as
itself; a name a certificate cannot hold is refused before a join token is spent;
names with control characters never reach a stream or a log line; one identity holds a
bounded number of streams; a revoked node loses its streams, renewals and joins; bad
join tokens are logged within a budget."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import aiohttp
import grpc
import pytest

from dgw_api.v1 import gateway_pb2
from testkit.ads_client import AdsCall, make_node, sotw_request
from testkit.wait import eventually
from tests.support.server import admin_headers, running_server
from xds_server.resources import CLUSTER
from xds_server.security.identity import gateway_id
from xds_server.security.keys import make_csr, new_private_key
from xds_server.server import XdsServer
from xds_server.settings import AdsLimits

from .conftest import control_channel, gateway_stub, node_cert, settings

pytestmark = pytest.mark.slow

REGISTERED = """
proxy_config:
  public_listeners:
    api: {{mode: http, path: {port}}}
container_dals:
  kv: {{container_listeners: {{api: {dal}}}}}
registrations:
  - address: {name}.dgwsample
"""


def _with_shop(tmp_path: Path, **more: object):  # type: ignore[no-untyped-def]
    s = settings(tmp_path, **more)
    (s.config_dir / "demo.yaml").write_text(REGISTERED.format(port=18100, dal=18101, name="demo"))
    (s.config_dir / "shop.yaml").write_text(REGISTERED.format(port=18200, dal=18201, name="shop"))
    return s


def _report(shard: str, node: str, host: str = "127.0.0.1", *registrations: str) -> gateway_pb2.NodeReport:
    return gateway_pb2.NodeReport(shard=shard, node_id=node, host_address=host, registrations=list(registrations))


async def _http(server: XdsServer, method: str, path: str, token: str | None = None, **kw: object) -> tuple[int, dict]:  # type: ignore[type-arg]
    headers = {"Authorization": f"Bearer {token}"} if token else admin_headers(server)
    async with aiohttp.ClientSession(headers=headers) as http, \
            http.request(method, f"http://127.0.0.1:{server.admin_port}{path}", **kw) as r:  # type: ignore[arg-type]
        return r.status, await r.json()


async def test_a_node_registers_only_its_own_shards_names_at_its_own_address(tmp_path: Path) -> None:
    async with running_server(_with_shop(tmp_path)) as server:
        cert = node_cert(server, "demo", "n1")
        async with control_channel(server, cert) as channel:
            stub = gateway_stub(channel)
            for report, what in ((_report("demo", "n1", "127.0.0.1", "shop.dgwsample"), "own shard's"),
                                 (_report("demo", "n1", "192.0.2.7", "demo.dgwsample"), "own address")):  # fmt: skip
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await stub.Report(report, timeout=5)
                assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and what in (info.value.details() or "")
            await stub.Report(_report("demo", "n1", "127.0.0.1", "demo.dgwsample"), timeout=5)
        assert server.registry.discovery("shop.dgwsample") == []
        assert [h["node_id"] for h in server.registry.discovery("demo.dgwsample")] == ["n1"]
        # The same over HTTP, with a node token of demo.
        status, made = await _http(server, "POST", "/v1/tokens",
                                   json={"role": "node", "name": "r", "shard": "demo", "one_time": False})  # fmt: skip
        body = {"shard": "demo", "node_id": "n2", "host_address": "127.0.0.1", "registrations": ["shop.dgwsample"]}
        status, answer = await _http(server, "POST", "/v1/reports", made["token"], json=body)
        assert status == 400 and "own shard's" in answer["error"]
        assert server.registry.discovery("shop.dgwsample") == []


async def test_a_node_id_a_certificate_cannot_hold_never_spends_the_join_token(secure_server: XdsServer) -> None:
    token = secure_server.create_join_token("a")
    key = new_private_key()
    async with control_channel(secure_server, None) as channel:
        stub = gateway_stub(channel)
        for node in ("n" * 65, "n" * 253, "n1\x00", "n\u202e1", "n1\n"):
            request = gateway_pb2.SignRequest(shard="a", node_id=node, join_token=token,
                                              csr_pem=make_csr(key, gateway_id("a")))  # fmt: skip
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.SignCertificate(request, timeout=10)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, node
        request = gateway_pb2.SignRequest(shard="a", node_id="n" * 64, join_token=token,
                                          csr_pem=make_csr(key, gateway_id("a")))  # fmt: skip
        assert (await stub.SignCertificate(request, timeout=10)).certificate_chain_pem


@pytest.mark.parametrize("node", ["n1\x00", "n\u202e1", "n1\nevent=forged", "n" * 65])
async def test_names_with_control_characters_never_reach_a_stream_or_a_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, node: str
) -> None:
    caplog.set_level(logging.INFO)
    async with running_server(settings(tmp_path, insecure=True)) as server, \
            grpc.aio.insecure_channel(f"127.0.0.1:{server.xds_port}") as channel:
        call = AdsCall(channel)
        await call.send(sotw_request(CLUSTER, node=make_node(node, "a")))
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call.read()
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await gateway_stub(channel).Report(_report("a", node), timeout=5)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert all(s.node_id != node for s in server.cache.node_status())
    assert "\x00" not in caplog.text and "\u202e" not in caplog.text and "\nevent=forged" not in caplog.text


async def test_one_identity_holds_a_bounded_number_of_streams(tmp_path: Path) -> None:
    async with running_server(settings(tmp_path, ads_limits=AdsLimits(max_streams_per_identity=3))) as server:
        cert = node_cert(server, "a", "n1")
        async with control_channel(server, cert) as channel:
            calls = [AdsCall(channel) for _ in range(4)]
            for call in calls[:3]:
                await call.send(sotw_request(CLUSTER, node=make_node("n1", "a")))
                assert await call.read() is not None
            await calls[3].send(sotw_request(CLUSTER, node=make_node("n1", "a")))
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await calls[3].read()
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "max_streams_per_identity" in (info.value.details() or "")
            # Another node of the shard has its own budget; a closed stream frees its slot.
            async with control_channel(server, node_cert(server, "a", "n2")) as other:
                call = AdsCall(other)
                await call.send(sotw_request(CLUSTER, node=make_node("n2", "a")))
                assert await call.read() is not None
                await call.close()
            await calls[0].close()
            await eventually(lambda: server.sessions.held("spiffe://dgw.local/gateway/a#n1") == 2,
                             what="the closed stream's slot")  # fmt: skip
            again = AdsCall(channel)
            await again.send(sotw_request(CLUSTER, node=make_node("n1", "a")))
            assert await again.read() is not None


async def test_a_revoked_node_loses_its_streams_renewals_and_joins(tmp_path: Path) -> None:
    s = settings(tmp_path)
    async with running_server(s) as server:
        cert = node_cert(server, "a", "n1")
        async with control_channel(server, cert) as channel:
            ads = AdsCall(channel)
            await ads.send(sotw_request(CLUSTER, node=make_node("n1", "a")))
            assert await ads.read() is not None
            watch = gateway_stub(channel).WatchConfig(gateway_pb2.WatchRequest(shard="a", node_id="n1"))
            assert (await watch.read()).shard == "a"

            status, body = await _http(server, "PUT", "/v1/revocations/a/n1", json={"reason": "key leaked"})
            assert status == 200 and body["new"] is True

            with pytest.raises(grpc.aio.AioRpcError) as info:
                await asyncio.wait_for(ads.read(), 10)
            assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED and "revoked" in (info.value.details() or "")
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await asyncio.wait_for(watch.read(), 10)
            assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
            renewal = gateway_pb2.SignRequest(shard="a", node_id="n1", csr_pem=make_csr(new_private_key(), gateway_id("a")))
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await gateway_stub(channel).SignCertificate(renewal, timeout=10)
            assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await gateway_stub(channel).Report(_report("a", "n1"), timeout=5)
            assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
        join = gateway_pb2.SignRequest(shard="a", node_id="n1", join_token=server.create_join_token("a"),
                                       csr_pem=make_csr(new_private_key(), gateway_id("a")))  # fmt: skip
        async with control_channel(server, None) as anonymous:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await gateway_stub(anonymous).SignCertificate(join, timeout=10)
            assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
        # Another node of the shard is untouched.
        async with control_channel(server, node_cert(server, "a", "n2")) as other:
            await gateway_stub(other).Report(_report("a", "n2"), timeout=5)
    async with running_server(s) as server:  # a restart keeps it
        cert = node_cert(server, "a", "n1")
        async with control_channel(server, cert) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await gateway_stub(channel).Report(_report("a", "n1"), timeout=5)
            assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
        status, body = await _http(server, "GET", "/v1/revocations")
        assert [(r["shard"], r["node"], r["reason"]) for r in body["revocations"]] == [("a", "n1", "key leaked")]
        status, _ = await _http(server, "DELETE", "/v1/revocations/a/n1")
        assert status == 200
        async with control_channel(server, None) as anonymous:
            join = gateway_pb2.SignRequest(shard="a", node_id="n1", join_token=server.create_join_token("a"),
                                           csr_pem=make_csr(new_private_key(), gateway_id("a")))  # fmt: skip
            assert (await gateway_stub(anonymous).SignCertificate(join, timeout=10)).certificate_chain_pem


async def test_bad_join_tokens_are_logged_within_a_budget(
    secure_server: XdsServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    request = gateway_pb2.SignRequest(shard="a", node_id="n1", join_token="dgw_000000000000_" + "x" * 43,
                                      csr_pem=make_csr(new_private_key(), gateway_id("a")))  # fmt: skip
    async with control_channel(secure_server, None) as channel:
        stub = gateway_stub(channel)
        for _ in range(100):
            with pytest.raises(grpc.aio.AioRpcError):
                await stub.SignCertificate(request, timeout=10)
    lines = [r for r in caplog.records if "event=unauthorized call=SignCertificate" in r.getMessage()]
    assert 1 <= len(lines) <= 20
