"""The Data Gateway agent: keeps one host at its shard's goal state.

It follows the shard's runtime config from the xds_server, runs the DALs (Docker
containers or local processes) and Envoy, restarts what dies or stays unhealthy, and
reports every DAL listener's address and health back so Envoy routes to healthy ones.

Entry points: ``sidecar.main.run_sidecar`` (run an agent) and ``sidecar.cli``
(``dgw sidecar``'s arguments). They are not imported here, so that importing a pure
part such as ``sidecar.plan`` does not load docker, grpc or aiohttp.
"""

from .config import SidecarSettings
from .errors import SidecarError

__all__ = ["SidecarError", "SidecarSettings"]
