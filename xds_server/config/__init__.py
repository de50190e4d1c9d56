"""Shard configuration: models, interpolation, loading and semantic checks."""

from .errors import ConfigError, Problem
from .load import load_any, load_served_config, load_shard, load_shard_text
from .model import DeployDesires, DeployFile, RuntimeConfig, ShardFile
from .semantics import ListenerTopology, listener_topology, parse_network_url

__all__ = [
    "ConfigError",
    "DeployDesires",
    "DeployFile",
    "ListenerTopology",
    "Problem",
    "RuntimeConfig",
    "ShardFile",
    "listener_topology",
    "load_any",
    "load_served_config",
    "load_shard",
    "load_shard_text",
    "parse_network_url",
]
