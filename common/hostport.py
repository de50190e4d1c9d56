"""``HOST:PORT`` as users type it on command lines (``127.0.0.1:18000``, ``[::1]:18000``)."""

from __future__ import annotations


def split_host_port(value: str, what: str = "address", allow_zero: bool = True) -> tuple[str, int]:
    """``HOST:PORT`` or ``[v6]:PORT`` → (host, port); ValueError names what is wrong."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ValueError(f"{what} {value!r} is not HOST:PORT (e.g. 127.0.0.1:18000)")
    host = host.strip("[]")
    number = int(port)
    low = 0 if allow_zero else 1
    if not low <= number <= 65535:
        raise ValueError(f"{what} {value!r}: port must be {low}-65535")
    return host, number


def join_host_port(host: str, port: int) -> str:
    """The inverse of ``split_host_port``: IPv6 hosts in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
