"""Hosts of our own on this machine: network namespaces joined by veth links, so a test
can cut one host's link (a partition), not only kill a process.

A ``Lab`` is a switch namespace with two bridges, ``ctl`` (etcd members and the
control plane's replicas) and ``edge`` (replicas, gateway hosts, clients), and one
namespace per host with a veth link into each network it is on. The machine itself
is a client on ``edge`` through one more veth link, so a test talks to the hosts
directly. Addresses come from the benchmarking ranges (RFC 2544): ``198.18.N.0/24``
for edge and ``198.19.N.0/24`` for ctl, with ``N`` chosen per lab among subnets
nothing on the machine routes yet; they exist only inside the lab (and on the
machine's one link into it). The machine routes edge to its link and ctl to a
blackhole, so no packet for a lab address ever leaves by its default route.

Everything a lab makes is named ``ha<4 hex>-...`` (namespaces) or ``ha<4 hex>r``
(the machine's link), so ``clean_leftovers`` can remove what a crashed run left (its
processes included) without touching anything else. ``Lab.close`` removes it all.
Needs root and iproute2.
"""

from __future__ import annotations

import ipaddress
import os
import re
import secrets
import signal
import subprocess
from dataclasses import dataclass, field

NETWORKS = ("ctl", "edge")
_FIRST_OCTET = {"edge": "198.18", "ctl": "198.19"}
_OURS_NS = re.compile(r"^ha[0-9a-f]{4}-[a-z0-9]+$")
_OURS_LINK = re.compile(r"^ha[0-9a-f]{4}r$")


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=30)


@dataclass
class Host:
    name: str
    namespace: str
    addresses: dict[str, str] = field(default_factory=dict)  # network → IPv4 address

    @property
    def prefix(self) -> list[str]:
        """Run a command on this host: ``[*host.prefix, "etcd", ...]``."""
        return ["ip", "netns", "exec", self.namespace]

    def address(self, network: str = "edge") -> str:
        return self.addresses[network]


class Lab:
    def __init__(self) -> None:
        clean_leftovers()
        self.id = secrets.token_hex(2)
        self.switch = f"ha{self.id}-sw"
        self.root_link = f"ha{self.id}r"
        self.subnet = _free_subnet()
        self.hosts: dict[str, Host] = {}
        self._made: list[str] = []
        self._blackhole = False
        try:
            self._namespace(self.switch)
            for net in NETWORKS:
                ip("-n", self.switch, "link", "add", net, "type", "bridge")
                ip("-n", self.switch, "link", "set", net, "up")
            ip("link", "add", self.root_link, "type", "veth", "peer", "name", "root", "netns", self.switch)
            ip("-n", self.switch, "link", "set", "root", "master", "edge", "up")
            ip("addr", "add", f"{self.network_address('edge', 254)}/24", "dev", self.root_link)
            ip("link", "set", self.root_link, "up")
            # The machine has no link into ctl: a packet for it must go nowhere, never
            # out of the machine's default route.
            ip("route", "add", "blackhole", f"{self.network_address('ctl', 0)}/24")
            self._blackhole = True
        except BaseException:
            self.close()
            raise

    def network_address(self, network: str, host: int) -> str:
        return f"{_FIRST_OCTET[network]}.{self.subnet}.{host}"

    def _namespace(self, name: str) -> None:
        ip("netns", "add", name)
        self._made.append(name)
        ip("-n", name, "link", "set", "lo", "up")

    def add_host(self, name: str, networks: tuple[str, ...] = ("edge",)) -> Host:
        """A host on ``networks``; its address ends in a number of its own."""
        if not re.fullmatch(r"[a-z][a-z0-9]{0,5}", name) or name in self.hosts:
            raise ValueError(f"host name {name!r}: 1-6 lower-case letters/digits, unique")
        number = 10 + len(self.hosts)
        host = Host(name, f"ha{self.id}-{name}")
        self._namespace(host.namespace)
        for net in networks:
            link = f"{name}-{net[0]}"  # the switch's end, e.g. r1-c
            ip("link", "add", net, "netns", host.namespace, "type", "veth", "peer", "name", link,
               "netns", self.switch)  # fmt: skip
            ip("-n", self.switch, "link", "set", link, "master", net, "up")
            address = self.network_address(net, number)
            ip("-n", host.namespace, "addr", "add", f"{address}/24", "dev", net)
            ip("-n", host.namespace, "link", "set", net, "up")
            host.addresses[net] = address
        self.hosts[name] = host
        return host

    def cut(self, host: Host, network: str) -> None:
        """Drop the host's link into ``network`` (a partition: its packets go nowhere)."""
        ip("-n", self.switch, "link", "set", f"{host.name}-{network[0]}", "down")

    def heal(self, host: Host, network: str) -> None:
        ip("-n", self.switch, "link", "set", f"{host.name}-{network[0]}", "up")

    def close(self) -> None:
        """Remove every namespace (its links go with it), after ending any process
        still in one (a process started through ``ip netns exec`` outlives the name)."""
        for name in reversed(self._made):
            _remove_namespace(name)
        self._made.clear()
        ip("link", "del", self.root_link, check=False)
        if self._blackhole:
            ip("route", "del", "blackhole", f"{self.network_address('ctl', 0)}/24", check=False)
            self._blackhole = False


def _remove_namespace(name: str) -> None:
    pids = ip("netns", "pids", name, check=False).stdout.split()
    for pid in pids:
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass
    ip("netns", "del", name, check=False)


def clean_leftovers() -> list[str]:
    """Remove what a lab of an earlier, crashed run left behind (ours only, by name)."""
    found = [line.split()[0] for line in ip("netns", "list", check=False).stdout.splitlines() if line.strip()]
    removed = [n for n in found if _OURS_NS.match(n)]
    for name in removed:
        _remove_namespace(name)
    for line in ip("-o", "link", "show", check=False).stdout.splitlines():
        link = line.split(":")[1].strip().split("@")[0] if ":" in line else ""
        if _OURS_LINK.match(link):
            ip("link", "del", link, check=False)
            removed.append(link)
    return removed


def _free_subnet() -> int:
    """An N for which nothing on the machine routes 198.18.N.0/24 or 198.19.N.0/24."""
    routes = ip("route", "show", check=False).stdout
    taken = set()
    for word in routes.split():
        try:
            net = ipaddress.ip_network(word, strict=False)
        except ValueError:
            continue
        if net.prefixlen >= 16 and str(net.network_address).startswith(("198.18.", "198.19.")):
            taken.add(int(str(net.network_address).split(".")[2]))
    choices = [n for n in range(1, 254) if n not in taken]
    return secrets.choice(choices)


def available() -> str | None:
    """Why labs cannot be made here (None: they can)."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    try:
        ip("netns", "list")
    except (OSError, subprocess.CalledProcessError) as e:
        return f"ip netns does not work here: {e}"
    return None
