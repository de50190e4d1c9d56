"""Shard configuration: models, interpolation, loading and semantic checks."""

from .errors import ConfigError, Problem, quote
from .load import (
    EnvPolicy,
    LoadedShard,
    load_any,
    load_served_config,
    load_shard,
    load_shard_checked,
    load_shard_file,
    load_shard_text,
    read_shard_text,
)
from .model import DeployDesires, DeployFile, RuntimeConfig, ShardFile
from .secrets import mask, mask_data, shown_problems
from .semantics import ListenerTopology, listener_topology, parse_network_url

__all__ = [
    "ConfigError",
    "DeployDesires",
    "DeployFile",
    "EnvPolicy",
    "ListenerTopology",
    "LoadedShard",
    "Problem",
    "RuntimeConfig",
    "ShardFile",
    "listener_topology",
    "load_any",
    "load_served_config",
    "load_shard",
    "load_shard_checked",
    "load_shard_file",
    "load_shard_text",
    "mask",
    "mask_data",
    "parse_network_url",
    "quote",
    "read_shard_text",
    "shown_problems",
]
