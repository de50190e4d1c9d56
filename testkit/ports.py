"""Loopback ports for tests and benchmarks: a free one to bind, and whether one answers."""

from __future__ import annotations

import socket

from sidecar.ports import free_port

__all__ = ["free_port", "port_open"]


def port_open(port: int, timeout: float = 0.2) -> bool:
    """Whether something accepts TCP connections on 127.0.0.1:``port``."""
    with socket.socket() as s:
        s.settimeout(timeout)
        return s.connect_ex(("127.0.0.1", port)) == 0
