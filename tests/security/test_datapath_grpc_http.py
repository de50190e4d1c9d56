"""gRPC and HTTP through secured listeners (mTLS + RBAC from ``consumers``), real parts:
a ``dgw server`` child, the sample DAL, a gateway Envoy with SDS from the test's
LocalSds, ``dgw client-proxy`` children for gRPC, and HTTP clients that speak TLS to
the gateway themselves (the documented alternative to the client proxy).
"""

from __future__ import annotations

import http.client
import json
import ssl
import urllib.request
from collections.abc import Iterator

import grpc
import pytest

from testkit.ports import free_port, port_open
from testkit.wait import wait_until
from tests.support.procs import Child, sample_dal
from xds_server.security.identity import gateway_id

from .datapath import SecureStack, envoy_log, healthy, refused_without_certificate

pytestmark = [pytest.mark.envoy, pytest.mark.slow]

SHARD = "kv"
ADDRESS = "kv.dgw"
WRITE = "/dgw.sample.v1.Echo/Echo"
READ = "/dgw.sample.v1.Echo/Stats"  # the DAL declares it a read (read_methods)
READ_WRITE, READ_ONLY, STRANGER = "prod-api", "studio_prod-ui", "prod-intruder"


def kv_shard(grpc_port: int, http_port: int, dal: dict[str, int], read_only: bool = True) -> dict:
    consumers = [{"type": "account-app", "value": READ_WRITE, "group": "read-write"}]
    if read_only:
        consumers.append({"type": "account-app", "value": READ_ONLY, "group": "read-only"})
    return {
        "proxy_config": {"public_listeners": {
            "secure_grpc": {"mode": "grpc", "path": grpc_port, "tls_creds": "metatron", "authz": "gandalf"},
            "secure_http": {"mode": "http", "path": http_port, "tls_creds": "metatron", "authz": "gandalf"},
        }},
        "container_dals": {"kv": {"container_listeners": dal, "read_methods": [READ]}},
        "registrations": [{"address": ADDRESS}],
        "deploy_desires": {"consumers": consumers},
    }  # fmt: skip


class Kv:
    def __init__(self, stack: SecureStack, dal: Child, grpc_port: int, http_port: int, dal_ports: dict[str, int]):
        self.stack, self.dal = stack, dal
        self.grpc_port, self.http_port, self.dal_ports = grpc_port, http_port, dal_ports
        self.envoy = stack.gateway(SHARD)


@pytest.fixture
def kv(tmp_path) -> Iterator[Kv]:
    stack = SecureStack(tmp_path)
    dal: Child | None = None
    try:
        grpc_port, http_port = free_port(), free_port()
        dal_ports = {"secure_grpc": free_port(), "secure_http": free_port()}
        stack.server.write_shard(SHARD, kv_shard(grpc_port, http_port, dal_ports))
        dal = sample_dal("kv", dal_ports, tmp_path / "dal-kv.log")
        stack.register(SHARD, "gw-1", ADDRESS, [healthy("kv", n, p) for n, p in dal_ports.items()])
        setup = Kv(stack, dal, grpc_port, http_port, dal_ports)
        wait_until(lambda: port_open(grpc_port) and port_open(http_port), 10, what="the secured listeners")
        yield setup
    finally:
        stack.close()
        if dal is not None:
            dal.stop()


def call(channel: grpc.Channel, method: str) -> grpc.StatusCode:
    try:
        channel.unary_unary(method)(b"x", timeout=5)
    except grpc.RpcError as e:
        return e.code()
    return grpc.StatusCode.OK


def https(kv: Kv, who: str | None) -> http.client.HTTPSConnection:
    return http.client.HTTPSConnection("127.0.0.1", kv.http_port, timeout=5, context=kv.stack.ca.client_context(who))


def status(conn: http.client.HTTPConnection, method: str, path: str = "/item/1") -> int:
    conn.request(method, path, body=b"v" if method in ("PUT", "POST") else None)
    response = conn.getresponse()
    response.read()
    return response.status


def test_grpc_read_write_read_only_and_unknown_identities(kv: Kv):
    channels = {}
    for who in (READ_WRITE, READ_ONLY, STRANGER):
        port = free_port()
        kv.stack.client_proxy(SHARD, "secure_grpc", ADDRESS, port, who)
        channels[who] = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        rw, ro, stranger = channels[READ_WRITE], channels[READ_ONLY], channels[STRANGER]
        wait_until(lambda: call(rw, WRITE) == grpc.StatusCode.OK, 15, what="a read-write gRPC call")
        assert rw.unary_unary(WRITE)(b"hi", timeout=5) == b"kv:hi"
        wait_until(lambda: call(ro, READ) == grpc.StatusCode.OK, 15, what="a read-only consumer's read")
        assert json.loads(ro.unary_unary(READ)(b"", timeout=5))["dal"] == "kv"
        assert call(ro, WRITE) == grpc.StatusCode.PERMISSION_DENIED
        wait_until(lambda: call(stranger, READ) == grpc.StatusCode.PERMISSION_DENIED, 15,
                   what="an unknown identity refused")  # fmt: skip
        assert call(stranger, WRITE) == grpc.StatusCode.PERMISSION_DENIED
    finally:
        for channel in channels.values():
            channel.close()
    # Each denial is logged with the caller's identity.
    log = wait_until(lambda: (t := envoy_log(kv.envoy)).count("dgw_denied listener=secure_grpc") >= 3 and t, 10,
                     what="the denials in Envoy's access log")  # fmt: skip
    assert f"peer=spiffe://dgw.local/studio_prod/ui method=POST path={WRITE} grpc_status=PermissionDenied" in log
    assert "peer=spiffe://dgw.local/prod/intruder" in log
    assert refused_without_certificate(kv.grpc_port, kv.stack.ca.client_context(None))


def test_http_groups_and_a_consumer_removed_live(kv: Kv):
    rw, ro, stranger = https(kv, READ_WRITE), https(kv, READ_ONLY), https(kv, STRANGER)
    try:
        assert wait_until(lambda: status(rw, "PUT") == 200, 15, what="a read-write PUT")
        assert status(rw, "GET") == 200
        assert status(ro, "GET") == 200 and status(ro, "HEAD") == 200
        assert status(ro, "PUT") == 403 and status(ro, "DELETE") == 403
        assert status(stranger, "GET") == 403
        with pytest.raises((ssl.SSLError, ConnectionResetError, http.client.RemoteDisconnected)):
            status(https(kv, None), "GET")

        # Remove the read-only consumer: its *next* request on the same connection is
        # refused, and the read-write caller's connection is not reset.
        rw_socket, ro_socket = rw.sock, ro.sock
        listeners_before = kv.envoy.stat("listener_manager.lds.update_success")
        kv.stack.server.write_shard(SHARD, kv_shard(kv.grpc_port, kv.http_port, kv.dal_ports, read_only=False))
        wait_until(lambda: status(ro, "GET") == 403, 10, what="the removed consumer refused")
        assert ro.sock is ro_socket
        for _ in range(5):
            assert status(rw, "PUT") == 200
        assert rw.sock is rw_socket, "the allowed caller's connection was closed"
        # The policy arrived in the route table: no listener was replaced (drained).
        assert kv.envoy.stat("listener_manager.lds.update_success") == listeners_before
    finally:
        for conn in (rw, ro, stranger):
            conn.close()


def test_client_proxy_refuses_a_gateway_with_another_identity(tmp_path):
    """A workload of the same CA posing as the shard's gateway: the client proxy checks
    the gateway's SPIFFE ID and never sends it a byte of the application's."""
    stack = SecureStack(tmp_path)
    dal: Child | None = None
    try:
        http_port, dal_port, proxy_port = free_port(), free_port(), free_port()
        stack.server.write_shard(SHARD, {
            "proxy_config": {"public_listeners": {
                "secure_http": {"mode": "http", "path": http_port, "tls_creds": "metatron", "authz": "gandalf"}}},
            "container_dals": {"kv": {"container_listeners": {"secure_http": dal_port}}},
            "registrations": [{"address": ADDRESS}],
            "deploy_desires": {"consumers": [{"type": "account-app", "value": READ_WRITE, "group": "read-write"}]},
        })  # fmt: skip
        dal = sample_dal("kv", {"secure_http": dal_port}, tmp_path / "dal.log")
        stack.register(SHARD, "gw-1", ADDRESS, [healthy("kv", "secure_http", dal_port)])
        stack.gateway(SHARD, identity=gateway_id("impostor"))
        wait_until(lambda: port_open(http_port), 10, what="the impostor's listener")
        proxy = stack.client_proxy(SHARD, "secure_http", ADDRESS, proxy_port, READ_WRITE)

        def refused() -> bool:
            conn = http.client.HTTPConnection("127.0.0.1", proxy_port, timeout=5)
            try:
                conn.request("GET", "/item/1")
                assert conn.getresponse().status != 200
            except (OSError, http.client.HTTPException):
                pass
            finally:
                conn.close()
            return stack.proxy_stat(proxy, "cluster.gateway.ssl.fail_verify_san") >= 1

        wait_until(refused, 15, what="the client proxy to refuse the impostor's certificate")
        # The DAL saw nothing.
        assert json.loads(urllib.request.urlopen(f"http://127.0.0.1:{dal_port}/stats", timeout=3).read())["requests"] == 0
    finally:
        stack.close()
        if dal is not None:
            dal.stop()
