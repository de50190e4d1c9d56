"""Where shard configurations come from (a directory of YAML files, for now)."""
