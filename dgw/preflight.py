"""Before ``dgw up`` starts anything: the ports Envoy must bind are free.

Envoy refuses a listener whose port another program holds, and a curl to that port
then reaches the other program: so a busy port is a failure that names the port and
the setting to change, never a line in the logs.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from pathlib import Path

import yaml

from common.hostport import split_host_port
from sidecar.ports import port_in_use
from xds_server.config import ShardFile
from xds_server.config.interpolate import InterpolationError, interpolate

# A variable's stand-in value: plain YAML text, and no variable name holds a "-".
_MARKED = re.compile(r"dgw-variable-([A-Za-z_][A-Za-z0-9_]*)-")
_SUGGEST_WITHIN = 50  # how far above a busy port to look for a free one to suggest


def busy_ports(shards: dict[str, tuple[ShardFile, str]], address: str) -> list[str]:
    """One message per port Envoy would fail to bind. ``shards``: name → (config, the
    file it came from)."""
    problems: list[str] = []
    for shard, (config, source) in sorted(shards.items()):
        for name, listener in sorted(config.proxy_config.public_listeners.items()):
            port = listener.address.port
            if port is not None and port_in_use(port, address):
                problems.append(
                    f"port {address}:{port} (listener {shard}.{name}) is in use by another "
                    f"program, so Envoy cannot listen there: {advice(source, name, port, address)}"
                )
    return problems


def busy_server_ports(addresses: dict[str, str], instance: str = "default") -> list[str]:
    """One message per control-plane address (option → HOST:PORT) another program holds.
    Checked before binding: gRPC would share a port it finds taken (SO_REUSEPORT)."""
    problems: list[str] = []
    for option, address in addresses.items():
        host, port = split_host_port(address, option)
        if port and port_in_use(port, host):
            problems.append(
                f"port {address} ({option}) of instance {instance} is in use by another program "
                f"(another dgw up? `dgw ls` lists them): stop it, pass {option} {host}:0 (any free "
                "port; the banner shows which), or start an instance of another name "
                "(`dgw up --name N`: free ports for all)"
            )
    return problems


def advice(source: str, listener: str, port: int, address: str) -> str:
    """What to change so the listener gets a port nobody holds."""
    key = f"proxy_config.public_listeners.{listener}.path"
    free = _free_above(port, address)
    variable = setting_variable(Path(source), listener)
    if variable:
        return f"stop that program or set {variable}={free} (used by {source}:{key})"
    return f"stop that program or change {source}:{key} (e.g. to {free})"


class _Markers(Mapping[str, str]):
    """An environment in which every variable's value names the variable."""

    def __getitem__(self, name: str) -> str:
        return f"dgw-variable-{name}-"

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0


def _listener_variables(source: Path) -> dict[str, str]:
    """Listener → the ``${VAR}`` its port comes from, in one shard file."""
    try:
        text = interpolate(source.read_text(encoding="utf-8"), _Markers())
        listeners = yaml.safe_load(text)["proxy_config"]["public_listeners"]
        paths = {name: str(spec["path"]) for name, spec in listeners.items()}
    except (OSError, UnicodeDecodeError, InterpolationError, yaml.YAMLError, KeyError, TypeError,
            AttributeError):
        return {}
    return {name: m.group(1) for name, path in paths.items() if (m := _MARKED.search(path))}


def setting_variable(source: Path, listener: str) -> str | None:
    """The ``${VAR}`` a listener's port comes from in its shard file, if any."""
    return _listener_variables(source).get(listener)


def port_variables(config_dir: Path) -> list[str]:
    """Every variable a public listener's port comes from in ``config_dir``'s shard
    files (``path: ${DGW_DEMO_HTTP_PORT:-8080}``), in order."""
    found: dict[str, None] = {}
    for source in sorted(config_dir.glob("*.y*ml")):
        found.update(dict.fromkeys(_listener_variables(source).values()))
    return list(found)


def _free_above(port: int, address: str) -> str:
    for candidate in range(port + 1, min(port + _SUGGEST_WITHIN, 65535) + 1):
        if not port_in_use(candidate, address):
            return str(candidate)
    return "a free port"
