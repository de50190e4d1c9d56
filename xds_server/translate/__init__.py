"""The translator: runtime config → gateway IR → Envoy resources, all pure functions.

``build_ir`` says what the proxy must do in the platform's words, ``to_resources``
says it in Envoy's, ``endpoints_for`` adds one node's reported DAL endpoints, and
``render_yaml`` shows the result to people.
"""

from xds_server.config import RuntimeConfig
from xds_server.resources import Resources

from .build import DEFAULT_OPTIONS, TranslateOptions, build_ir
from .discovery import DISCOVERY_SHARD, RegisteredHost, discovery_assignments
from .discovery import resource_name as discovery_name
from .endpoints import endpoints_for
from .envoy import to_resources
from .ir import GatewayIR
from .render import render_yaml, resilience_summary


def translate(cfg: RuntimeConfig, options: TranslateOptions = DEFAULT_OPTIONS) -> Resources:
    """The Envoy resources of ``cfg``; raises ConfigError as ``build_ir`` does."""
    return to_resources(build_ir(cfg, options))


__all__ = [
    "DISCOVERY_SHARD",
    "GatewayIR",
    "RegisteredHost",
    "TranslateOptions",
    "build_ir",
    "discovery_assignments",
    "discovery_name",
    "endpoints_for",
    "render_yaml",
    "resilience_summary",
    "to_resources",
    "translate",
]
