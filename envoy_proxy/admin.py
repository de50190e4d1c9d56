"""Envoy's admin API (loopback only): is it live, what do its stats say, which ports
do its listeners hold. The parsing is pure; ``EnvoyAdmin`` only fetches."""

from __future__ import annotations

import json
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


class EnvoyAdmin:
    """The admin API of one Envoy, at the address Envoy wrote to ``address_file``
    (``--admin-address-path``), so a bootstrap may ask for port 0."""

    def __init__(self, address_file: Path, session: aiohttp.ClientSession) -> None:
        self._address_file = address_file
        self._session = session
        self._address: str | None = None

    @property
    def address(self) -> str | None:
        """HOST:PORT once Envoy has written it; None before."""
        if self._address is None:
            try:
                text = self._address_file.read_text().strip()
            except OSError:
                return None
            self._address = text or None
        return self._address

    def _url(self, path: str) -> str:
        address = self.address
        if address is None:
            raise AdminUnavailable("envoy has not opened its admin port yet")
        return f"http://{address}{path}"

    async def get_text(self, path: str, params: dict[str, str] | None = None) -> str:
        """GET ``path``: the body as text whatever the status (``/ready`` answers 503)."""
        url = self._url(path)
        try:
            async with self._session.get(url, params=params) as response:
                return await response.text()
        except (TimeoutError, aiohttp.ClientError) as e:
            raise AdminUnavailable(f"envoy admin {self.address} not answering {path}: {e!r}") from None

    async def get_json(self, path: str, params: dict[str, str] | None = None) -> dict[str, Any]:
        text = await self.get_text(path, {**(params or {}), "format": "json"})
        try:
            data = _json(text)
        except ValueError as e:
            raise AdminUnavailable(f"envoy admin {self.address} {path}: not JSON: {e}") from None
        return data

    async def post(self, path: str) -> None:
        url = self._url(path)
        try:
            async with self._session.post(url):
                pass
        except (TimeoutError, aiohttp.ClientError) as e:
            raise AdminUnavailable(f"envoy admin {self.address} not answering {path}: {e!r}") from None

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


def _json(text: str) -> dict[str, Any]:
    data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError(f"expected an object, got {type(data).__name__}")
    return data
