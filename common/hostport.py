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


def split_addresses(value: str, what: str = "address") -> list[tuple[str, int]]:
    """``HOST:PORT[,HOST:PORT...]`` (the replicas of one control plane) → [(host, port)].
    Several addresses must be IP addresses: one DNS name with an address per replica
    does the same for names."""
    parts = [p.strip() for p in value.split(",") if p.strip()]
    if not parts:
        raise ValueError(f"{what} {value!r} names no HOST:PORT")
    addresses = [split_host_port(p, what, allow_zero=False) for p in parts]
    if len(addresses) > 1:
        for host, _ in addresses:
            if not _is_ip(host):
                raise ValueError(f"{what} {value!r}: several addresses must be IP addresses, not "
                                 f"{host!r} (or give one DNS name that has an address per replica)")
    return addresses


def grpc_target(addresses: list[tuple[str, int]]) -> str:
    """The gRPC channel target for one address (as typed) or several IP addresses (one
    channel that fails over between them)."""
    if len(addresses) == 1:
        return join_host_port(*addresses[0])
    v6 = [":" in host for host, _ in addresses]
    if all(v6):
        return "ipv6:" + ",".join(f"[{h}]:{p}" for h, p in addresses)
    if any(v6):
        raise ValueError("several addresses must all be IPv4 or all IPv6")
    return "ipv4:" + ",".join(f"{h}:{p}" for h, p in addresses)


def _is_ip(host: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
