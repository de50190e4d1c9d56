"""Host port assignment for DAL listeners: sticky, conflict-free, explained when not.

A DAL keeps the host ports it already has (read back from its labels) unless another
owner now needs them; new listeners take the lowest free port of the agent's range.
"Free" means: not the proxy's (public listeners, admin), not another DAL's, and not
bound by anyone else on this host. The decision is pure given ``in_use``.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class PortAssignment:
    ports: dict[str, dict[str, int]] = field(default_factory=dict)  # dal → listener → port
    errors: dict[str, str] = field(default_factory=dict)  # dal → why it got none


def assign_ports(
    wanted: Mapping[str, Sequence[str]],
    *,
    previous: Mapping[str, Mapping[str, int]],
    reserved: Mapping[int, str],
    owned: set[int],
    in_use: Callable[[int], bool],
    port_range: tuple[int, int],
) -> PortAssignment:
    """Give every (dal, listener) in ``wanted`` a host port.

    previous: ports the DAL's current instance holds (kept when still valid);
    reserved: port → owner for ports that are not the DALs' to take (the proxy's);
    owned: ports held by live instances of this agent (in use, but by us);
    in_use: whether someone else on the host has bound a port.
    """
    taken: dict[int, str] = {}
    ports: dict[str, dict[str, int]] = {dal: {} for dal in wanted}
    errors: dict[str, str] = {}

    def keepable(port: int) -> bool:
        return port not in reserved and port not in taken and (port in owned or not in_use(port))

    def free(port: int) -> bool:
        # A live instance's port is never handed to another DAL, even one being
        # removed in the same pass: it is still bound until that instance is gone.
        return port not in reserved and port not in taken and port not in owned and not in_use(port)

    # Pass 1: keep what instances already have, so a new DAL never steals a live port.
    for dal in sorted(wanted):
        for listener in sorted(wanted[dal]):
            port = previous.get(dal, {}).get(listener)
            if port is not None and keepable(port):
                ports[dal][listener] = port
                taken[port] = f"dal {dal} listener {listener}"

    # Pass 2: the rest take the lowest free port of the range.
    low, high = port_range
    cursor = low
    for dal in sorted(wanted):
        for listener in sorted(wanted[dal]):
            if listener in ports[dal]:
                continue
            while cursor <= high and not free(cursor):
                cursor += 1
            if cursor > high:
                errors[dal] = (
                    f"no free host port for dal {dal} listener {listener} in {low}-{high}: "
                    "every port is reserved or in use; free some or widen --dal-ports"
                )
                break
            ports[dal][listener] = cursor
            taken[cursor] = f"dal {dal} listener {listener}"
            cursor += 1

    return PortAssignment(
        ports={dal: p for dal, p in ports.items() if dal not in errors}, errors=errors
    )


class PortClaims:
    """Host ports the agents of one process have handed out. ``dgw up`` runs one
    agent per shard in one process and gives them one ``PortClaims``: without it, two
    of them could pick the same free port for DALs that have not bound it yet."""

    def __init__(self) -> None:
        self._by_owner: dict[str, frozenset[int]] = {}

    def claim(self, owner: str, ports: set[int]) -> None:
        self._by_owner[owner] = frozenset(ports)

    def release(self, owner: str) -> None:
        self._by_owner.pop(owner, None)

    def others(self, owner: str) -> dict[int, str]:
        return {
            port: f"the agent of {other}"
            for other, ports in self._by_owner.items()
            if other != owner
            for port in ports
        }



def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that nothing listens on right now (the kernel's pick)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def port_in_use(port: int, host: str = "0.0.0.0") -> bool:
    """Whether a TCP listen on ``host:port`` would fail because someone holds it.

    SO_REUSEADDR makes TIME_WAIT leftovers of a dead DAL count as free, as they are
    for the DAL itself (servers set it too); an active listener still counts.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            if e.errno in (errno.EADDRINUSE, errno.EACCES):
                return True
            raise
    return False
