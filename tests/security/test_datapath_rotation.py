"""Certificate rotation under a steady, bounded load: the gateway's certificate is
replaced over SDS (and the application's, through the files `dgw client-proxy`
follows) while requests flow; none fails, kept-alive connections stay, and Envoy's
``/certs`` shows the new serial numbers.
"""

from __future__ import annotations

import datetime as dt
import http.client
import json
import re
import ssl
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography import x509

from envoy_proxy.blocking import admin_text
from testkit.ports import free_port, port_open
from testkit.wait import wait_until
from tests.support.procs import sample_dal

from .datapath import SecureStack, healthy

pytestmark = [pytest.mark.envoy, pytest.mark.slow]

SHARD, ADDRESS, APP = "rot", "rot.dgw", "prod-api"
LIFETIME = dt.timedelta(minutes=2)  # short-lived, as in production only shorter
MAX_REQUESTS = 3000
MAX_SECONDS = 30.0


@dataclass
class Load:
    """Requests one after another until stopped (or a bound is hit): on one kept-alive
    TLS connection to the gateway, on a new TLS connection every 10th request (new
    handshakes see the new certificate), and through the client proxy."""

    stack: SecureStack
    gateway_port: int
    proxy_port: int
    sent: int = 0
    failures: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        context = self.stack.ca.client_context(APP)
        kept = http.client.HTTPSConnection("127.0.0.1", self.gateway_port, timeout=5, context=context)
        proxied = http.client.HTTPConnection("127.0.0.1", self.proxy_port, timeout=5)
        self.kept_socket = None
        deadline = time.monotonic() + MAX_SECONDS
        try:
            while not self.stop.is_set() and self.sent < MAX_REQUESTS and time.monotonic() < deadline:
                self.sent += 1
                targets = [kept, proxied]
                if self.sent % 10 == 0:
                    targets.append(http.client.HTTPSConnection("127.0.0.1", self.gateway_port, timeout=5,
                                                               context=context))  # fmt: skip
                for conn in targets:
                    try:
                        conn.request("GET", f"/r/{self.sent}")
                        response = conn.getresponse()
                        response.read()
                        if response.status != 200:
                            self.failures.append(f"request {self.sent}: HTTP {response.status}")
                    except (OSError, http.client.HTTPException) as e:
                        self.failures.append(f"request {self.sent}: {e!r}")
                if self.kept_socket is None:
                    self.kept_socket = kept.sock
                elif kept.sock is not self.kept_socket:
                    self.failures.append(f"request {self.sent}: the kept-alive connection was replaced")
                    self.kept_socket = kept.sock
                if len(targets) == 3:
                    targets[2].close()
        finally:
            kept.close()
            proxied.close()


def serials(certs_json: str) -> set[int]:
    return {
        int(cert["serial_number"], 16)
        for entry in json.loads(certs_json)["certificates"]
        for cert in entry.get("cert_chain", [])
    }


def test_rotation_under_load_fails_no_request(tmp_path):
    stack = SecureStack(tmp_path)
    dal = None
    load: Load | None = None
    thread: threading.Thread | None = None
    try:
        gateway_port, dal_port, proxy_port = free_port(), free_port(), free_port()
        stack.server.write_shard(SHARD, {
            "proxy_config": {"public_listeners": {
                "secure_http": {"mode": "http", "path": gateway_port, "tls_creds": "metatron", "authz": "gandalf"}}},
            "container_dals": {"kv": {"container_listeners": {"secure_http": dal_port}}},
            "registrations": [{"address": ADDRESS}],
            "deploy_desires": {"consumers": [{"type": "account-app", "value": APP, "group": "read-write"}]},
        })  # fmt: skip
        dal = sample_dal("kv", {"secure_http": dal_port}, tmp_path / "dal.log")
        stack.register(SHARD, "gw-1", ADDRESS, [healthy("kv", "secure_http", dal_port)])
        envoy = stack.gateway(SHARD, lifetime=LIFETIME)
        wait_until(lambda: port_open(gateway_port), 10, what="the secured listener")
        proxy = stack.client_proxy(SHARD, "secure_http", ADDRESS, proxy_port, APP)
        proxy_admin = re.search(r"admin=(\S+)", wait_until(lambda: "admin=" in proxy.log() and proxy.log(), 10)).group(1)

        def proxy_certs() -> str:
            return admin_text(Path(proxy_admin), "/certs")

        def answered(port: int, context: ssl.SSLContext | None) -> bool:
            conn = (http.client.HTTPSConnection("127.0.0.1", port, timeout=5, context=context) if context
                    else http.client.HTTPConnection("127.0.0.1", port, timeout=5))  # fmt: skip
            try:
                conn.request("GET", "/ready")
                return conn.getresponse().status == 200
            finally:
                conn.close()

        wait_until(lambda: answered(gateway_port, stack.ca.client_context(APP)), 15, what="the gateway serving")
        wait_until(lambda: answered(proxy_port, None), 15, what="the client proxy serving")

        load = Load(stack, gateway_port, proxy_port)
        thread = threading.Thread(target=load.run, name="load")
        thread.start()
        wait_until(lambda: load.sent >= 20, 10, what="the load running")

        # The gateway: new certificates over SDS (its files rewritten, as a renewal
        # would), twice.
        for round_ in range(2):
            serial = stack.rotate_gateway(SHARD, lifetime=LIFETIME)
            wait_until(lambda s=serial: s in serials(envoy.admin_text("/certs")), 10,
                       what=f"gateway certificate {round_ + 1} in Envoy's /certs")  # fmt: skip
            sent = load.sent
            wait_until(lambda s=sent: load.sent >= s + 20, 10, what="requests after the rotation")
        # The application: `dgw ca issue` writes new files; the client proxy follows them.
        before = serials(proxy_certs())
        new_files = stack.ca.app_files(APP)
        new_serial = {x509.load_pem_x509_certificate(new_files["certificate"].read_bytes()).serial_number}
        assert not new_serial & before
        wait_until(lambda: new_serial <= serials(proxy_certs()), 10, what="the client proxy's new certificate in /certs")
        sent = load.sent
        wait_until(lambda: load.sent >= sent + 20, 10, what="requests after the client's rotation")
        load.stop.set()
        thread.join(MAX_SECONDS)
        assert not thread.is_alive()
        assert load.failures == [], f"{len(load.failures)} of {load.sent} failed: {load.failures[:5]}"
        assert load.sent >= 60
    finally:
        if load is not None:
            load.stop.set()
        if thread is not None:
            thread.join(MAX_SECONDS)
        stack.close()
        if dal is not None:
            dal.stop()
