"""The Data Gateway agent: keeps one host at its shard's goal state.

It follows the shard's runtime config from the xds_server, runs the DALs (Docker
containers or local processes) and Envoy, restarts what dies or stays unhealthy, and
reports every DAL listener's address and health back so Envoy routes to healthy ones.
"""

from .cli import add_arguments, add_commands, settings_from_args
from .config import SidecarSettings
from .errors import SidecarError
from .main import run, run_sidecar

__all__ = [
    "SidecarError",
    "SidecarSettings",
    "add_arguments",
    "add_commands",
    "run",
    "run_sidecar",
    "settings_from_args",
]
