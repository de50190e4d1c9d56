"""Envoy's admin API, on a Unix socket: is it live, what do its stats say, which ports
do its listeners hold, which hosts are healthy. The parsing is pure; ``EnvoyAdmin``,
the one admin client in the project, only fetches.

Every Envoy we start has its admin on a Unix socket in its own work directory, mode
0600 (``EnvoyProcess``): admin can stop Envoy (``/quitquitquit``), fail its health
checks and dump its config, so no other local user may reach it, as any could a
loopback port. Only the owner (the sidecar, ``dgw``, the tests and benchmarks that
started it) connects.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from .errors import AdminUnavailable
from .stats import ENVOY_FILTER, Sample, parse_sample


@dataclass(frozen=True)
class Stats:
    """One ``/stats`` answer: counters and gauges by name, and text readouts (such as
    ``*.version_text``) apart, since they are strings."""

    numbers: dict[str, int] = field(default_factory=dict)
    texts: dict[str, str] = field(default_factory=dict)

    def number(self, name: str) -> int:
        """A counter or gauge; 0 when Envoy has not created it (yet)."""
        return self.numbers.get(name, 0)


def parse_stats(data: dict[str, Any]) -> Stats:
    """``/stats?format=json`` → Stats (histograms are left out)."""
    numbers: dict[str, int] = {}
    texts: dict[str, str] = {}
    for item in data.get("stats", []):
        if "name" not in item:
            continue
        value = item.get("value", 0)
        if isinstance(value, str):
            texts[item["name"]] = value
        else:
            numbers[item["name"]] = int(value)
    return Stats(numbers, texts)


def parse_listener_ports(data: dict[str, Any]) -> frozenset[int]:
    """``/listeners?format=json`` → every port a listener is bound to."""
    ports: set[int] = set()
    for item in data.get("listener_statuses", []):
        addresses = [item.get("local_address", {}), *(item.get("additional_local_addresses") or [])]
        for address in addresses:
            port = address.get("socket_address", {}).get("port_value")
            if port:
                ports.add(int(port))
    return frozenset(ports)


def parse_cluster_names(data: dict[str, Any]) -> frozenset[str]:
    """``/clusters?format=json`` → the names of every cluster Envoy holds."""
    return frozenset(c["name"] for c in data.get("cluster_statuses", []) if "name" in c)


def parse_healthy_hosts(text: str) -> dict[str, int]:
    """Healthy hosts per cluster from ``/clusters`` text
    (``NAME::HOST:PORT::health_flags::FLAGS``)."""
    healthy: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split("::")
        if len(parts) == 4 and parts[2] == "health_flags":
            healthy.setdefault(parts[0], 0)
            if parts[3] == "healthy":
                healthy[parts[0]] += 1
    return healthy


# A Unix socket address holds 107 bytes of path; a longer one is reached through the
# socket's directory, opened once (``/proc/self/fd/N/NAME``).
_SUN_PATH_BYTES = 107
_TIMEOUT_S = 2.0


class EnvoyAdmin:
    """The admin API of one Envoy on the Unix socket ``socket``. When Envoy writes
    ``opened_file`` (its ``--admin-address-path``) once admin listens, the socket is
    asked only after that. ``close()`` when done (or ``async with``)."""

    def __init__(self, socket: Path, opened_file: Path | None = None, timeout_s: float = _TIMEOUT_S) -> None:
        self.socket = Path(socket).absolute()
        self._opened_file = opened_file
        self._timeout_s = timeout_s
        self._session: aiohttp.ClientSession | None = None
        self._dir_fd: int | None = None

    async def __aenter__(self) -> EnvoyAdmin:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    @property
    def address(self) -> str | None:
        """The socket's path once Envoy listens on it (as far as we can tell); None before."""
        if self._opened_file is not None:
            return str(self.socket) if self._opened_file.exists() else None
        return str(self.socket) if self.socket.exists() else None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            path = str(self.socket)
            if len(os.fsencode(path)) > _SUN_PATH_BYTES:
                self._dir_fd = os.open(self.socket.parent, os.O_PATH | os.O_DIRECTORY)
                path = f"/proc/self/fd/{self._dir_fd}/{self.socket.name}"
            self._session = aiohttp.ClientSession(
                connector=aiohttp.UnixConnector(path=path),
                timeout=aiohttp.ClientTimeout(total=self._timeout_s),
            )
        return self._session

    def _url(self, path: str) -> str:
        if self.address is None:
            raise AdminUnavailable(f"envoy has not opened its admin socket {self.socket} yet")
        return f"http://envoy{path}"

    async def get_text(self, path: str, params: dict[str, str] | None = None) -> str:
        """GET ``path``: the body as text whatever the status (``/ready`` answers 503)."""
        url = self._url(path)
        try:
            async with self._http().get(url, params=params) as response:
                return await response.text()
        except (TimeoutError, aiohttp.ClientError, OSError) as e:
            raise AdminUnavailable(f"envoy admin {self.socket} not answering {path}: {e!r}") from None

    async def get_json(self, path: str, params: dict[str, str] | None = None) -> dict[str, Any]:
        text = await self.get_text(path, {**(params or {}), "format": "json"})
        try:
            data = _json(text)
        except ValueError as e:
            raise AdminUnavailable(f"envoy admin {self.socket} {path}: not JSON: {e}") from None
        return data

    async def post(self, path: str) -> None:
        url = self._url(path)
        try:
            async with self._http().post(url):
                pass
        except (TimeoutError, aiohttp.ClientError, OSError) as e:
            raise AdminUnavailable(f"envoy admin {self.socket} not answering {path}: {e!r}") from None

    async def ready(self) -> bool:
        """``/ready`` says LIVE: the initial config is fetched and Envoy serves."""
        return (await self.get_text("/ready")).strip() == "LIVE"

    async def stats(self, pattern: str | None = None) -> Stats:
        """The stats whose names match the regular expression ``pattern`` (all without one)."""
        return parse_stats(await self.get_json("/stats", {"filter": pattern} if pattern else None))

    async def sample(self) -> Sample:
        """The stats a gateway host reports (``envoy_proxy.stats``), histograms as
        cumulative bucket counts."""
        data = await self.get_json("/stats", {"filter": ENVOY_FILTER, "histogram_buckets": "cumulative"})
        return parse_sample(data)

    async def listener_ports(self) -> frozenset[int]:
        return parse_listener_ports(await self.get_json("/listeners"))

    async def cluster_names(self) -> frozenset[str]:
        return parse_cluster_names(await self.get_json("/clusters"))

    async def healthy_hosts(self) -> dict[str, int]:
        """Healthy hosts per cluster."""
        return parse_healthy_hosts(await self.get_text("/clusters"))

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._dir_fd is not None:
            os.close(self._dir_fd)
            self._dir_fd = None


def _json(text: str) -> dict[str, Any]:
    data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError(f"expected an object, got {type(data).__name__}")
    return data
