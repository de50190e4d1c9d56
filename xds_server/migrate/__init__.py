"""Data migrations between two DALs of a shard: model (phases), plan (pure), engine."""
