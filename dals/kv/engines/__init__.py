"""Storage engines of the Key-Value DAL: the contract (``base.py``) and one module per
engine. ``open_engine`` opens the one a config names; a third engine is a module here,
a config class in ``dals/kv/config.py`` and one branch below."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import (
    Batch,
    CommitOutcome,
    Engine,
    EngineError,
    KeyRange,
    Keys,
    Selection,
    StoredItem,
    Version,
)

if TYPE_CHECKING:
    from ..config import EngineConfig


async def open_engine(config: EngineConfig) -> Engine:
    """The engine ``config`` describes, opened (its schema created or upgraded)."""
    from ..config import PostgresConfig, SqliteConfig

    match config:
        case SqliteConfig():
            from .sqlite import SqliteEngine

            return await SqliteEngine.open(config.path, config.synchronous)
        case PostgresConfig():
            from .postgres import PostgresEngine

            return await PostgresEngine.open(config.dsn, config.schema_name, config.pool_size)


__all__ = [
    "Batch",
    "CommitOutcome",
    "Engine",
    "EngineError",
    "KeyRange",
    "Keys",
    "Selection",
    "StoredItem",
    "Version",
    "open_engine",
]
