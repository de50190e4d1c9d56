"""The secured data path with real parts: a test CA, a gateway Envoy whose certificates
come over SDS from a ``LocalSds`` the test runs, a ``dgw server`` child, and ``dgw
client-proxy`` children.

The gateway's credentials are issued here from a test CA (not by the sidecar's
IdentityKeeper), so the data path is proven on its own.
"""

from __future__ import annotations

import datetime as dt
import re
import shutil
import socket
import ssl
import sys
import tempfile
from pathlib import Path
from typing import Any

from cryptography import x509

from dgw.ca_cli import issue
from envoy_proxy import BlockingEnvoy, make_bootstrap
from envoy_proxy.blocking import admin_text
from testkit.ports import port_open
from testkit.sds import SdsChild
from testkit.wait import wait_until
from tests.support.gateway import XdsServerProcess
from tests.support.procs import Child
from xds_server.security.ca import CertificateAuthority
from xds_server.security.identity import SpiffeId, consumer_id, gateway_id

READY_TIMEOUT_S = 20.0


class TestCa:
    __test__ = False  # not a test class

    def __init__(self, directory: Path) -> None:
        self.ca = CertificateAuthority.init(directory / "ca")
        self.directory = directory

    def app_files(self, account_app: str) -> dict[str, Path]:
        """cert.pem, key.pem (0600), bundle.pem for ``ACCOUNT-APP`` as `dgw ca issue` writes them."""
        return self.files(consumer_id("account-app", account_app), account_app)

    def files(self, identity: SpiffeId, name: str, lifetime: dt.timedelta = dt.timedelta(hours=1)) -> dict[str, Path]:
        """A new key and certificate for ``identity`` in ``DIR/name`` (replacing what is there)."""
        return issue(self.ca, identity, self.directory / name, lifetime)

    def client_context(self, account_app: str | None) -> ssl.SSLContext:
        """A client TLS context that trusts the CA and presents ``account_app``'s
        certificate (none when None)."""
        context = ssl.create_default_context(cadata=self.ca.bundle_pem.decode())
        context.check_hostname = False  # gateways are named by their SPIFFE ID, not a host name
        if account_app is not None:
            files = self.app_files(account_app) if not (self.directory / account_app).exists() else {
                "certificate": self.directory / account_app / "cert.pem",
                "key": self.directory / account_app / "key.pem"}  # fmt: skip
            context.load_cert_chain(files["certificate"], files["key"])
        return context


class SecureStack:
    """A ``dgw server``, gateway Envoys with SDS from the test, client proxies."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        # Unix socket paths must stay short: pytest's tmp_path can be long.
        self.short = Path(tempfile.mkdtemp(prefix="dgw-dp-"))
        self.ca = TestCa(workdir)
        self.server = XdsServerProcess(workdir).start()
        self.envoys: list[BlockingEnvoy] = []
        self.sds: list[SdsChild] = []
        self.children: list[Child] = []

    def gateway(self, shard: str, node_id: str = "gw-1", providers: tuple[str, ...] = ("metatron",),
                lifetime: dt.timedelta = dt.timedelta(hours=1), identity: SpiffeId | None = None,
                ) -> BlockingEnvoy:  # fmt: skip
        """A gateway Envoy of ``shard`` with the gateway identity (or ``identity``) served
        over SDS by a child process that follows its files (``rotate_gateway`` replaces them)."""
        socket_path = self.short / f"{shard}-{node_id}.sock"
        files = self.ca.files(identity or gateway_id(shard), f"gateway-{shard}-{node_id}", lifetime)
        self.sds.append(SdsChild(socket_path, shard, list(providers), files,
                                 self.workdir / f"sds-{shard}-{node_id}.log"))  # fmt: skip
        config = make_bootstrap(shard, node_id, f"127.0.0.1:{self.server.xds_port}", sds_socket=str(socket_path))
        envoy = BlockingEnvoy(config, self.workdir, name=f"envoy-{shard}-{node_id}", concurrency=1)
        self.envoys.append(envoy)
        envoy.wait_ready(READY_TIMEOUT_S)
        return envoy

    def rotate_gateway(self, shard: str, node_id: str = "gw-1",
                       lifetime: dt.timedelta = dt.timedelta(hours=1)) -> int:  # fmt: skip
        """New gateway credentials written over the old files; the new serial number."""
        files = self.ca.files(gateway_id(shard), f"gateway-{shard}-{node_id}", lifetime)
        return x509.load_pem_x509_certificate(files["certificate"].read_bytes()).serial_number

    def register(self, shard: str, node_id: str, address: str, endpoints: list[dict[str, Any]]) -> None:
        self.server.post("/v1/reports", {
            "shard": shard, "node_id": node_id, "host_address": "127.0.0.1",
            "registrations": [address], "endpoints": endpoints,
        })  # fmt: skip

    def client_proxy(self, shard: str, listener: str, address: str, port: int, account_app: str) -> Child:
        """``dgw client-proxy`` as a user runs it, with a certificate from `dgw ca issue`."""
        files = self.ca.app_files(account_app)
        child = Child(
            [sys.executable, "-m", "dgw.cli", "client-proxy", "--shard", shard, "--listener", listener,
             "--address", address, "--listen", f"127.0.0.1:{port}",
             "--xds", f"127.0.0.1:{self.server.xds_port}", "--insecure", "--node-id", f"app-{account_app}-{port}",
             "--identity", str(files["certificate"]), str(files["key"])],
            log=self.workdir / f"client-proxy-{port}.log",
        )  # fmt: skip
        self.children.append(child)
        wait_until(lambda: child.serving(port, "dgw client-proxy"), READY_TIMEOUT_S, what="the client proxy listening")
        return child

    def proxy_stat(self, proxy: Child, name: str) -> int:
        """A counter of a client proxy's Envoy (its admin socket is in its ready line)."""
        admin = re.search(r"admin=(\S+)", proxy.log())
        assert admin, "the client proxy has not logged its admin socket"
        for line in admin_text(Path(admin.group(1)), "/stats", {"filter": f"^{re.escape(name)}$"}).splitlines():
            key, _, value = line.partition(": ")
            if key == name:
                return int(value)
        return 0

    def close(self) -> None:
        for child in self.children:
            child.stop()
        for envoy in self.envoys:
            envoy.stop()
        for sds in self.sds:
            sds.stop()
        self.server.stop()
        shutil.rmtree(self.short, ignore_errors=True)


def envoy_log(envoy: BlockingEnvoy) -> str:
    """What this Envoy wrote to stdout and stderr (its access log lines included)."""
    return envoy.process.log_tail(chars=1_000_000)


def refused_without_certificate(port: int, context: ssl.SSLContext) -> bool:
    """Whether the listener on ``port`` refuses a TLS client that trusts it but has no
    certificate: at the handshake, or (TLS 1.3, where the server's verdict arrives
    after the client's Finished) as an alert on the first read."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        try:
            with context.wrap_socket(raw) as tls:
                tls.sendall(b"\x00\x00\x00\x08\x04\xd2\x16\x2f")  # PostgreSQL's SSLRequest
                return tls.recv(1) == b""
        except (ssl.SSLError, ConnectionResetError):
            return True


def healthy(dal: str, listener: str, port: int) -> dict[str, Any]:
    return {"dal": dal, "listener": listener, "address": "127.0.0.1", "port": port, "health": "HEALTHY"}


__all__ = ["SecureStack", "TestCa", "envoy_log", "healthy", "port_open", "refused_without_certificate"]
