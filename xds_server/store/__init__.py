"""The versioned config store: every shard's YAML text as written, every change a
numbered version (author, time, message, source, owner, content hash), compare-and-set
on the base version, an audit log, records (the platform's operational state, each
a JSON text with compare-and-set on its own version), and a watch that resumes from a revision.

``ConfigStore`` is the contract (``base``); ``SqliteStore`` the embedded backend. The
store is dumb storage: callers parse, validate and translate before they write.
"""

from xds_server.store.base import (
    API_OWNER,
    SOURCES,
    AuditEntry,
    ConfigStore,
    Conflict,
    DataDirInUse,
    Listing,
    NotFound,
    Record,
    RecordConflict,
    ShardVersion,
    Source,
    StoreError,
    Version,
    Write,
    content_hash,
    file_owner,
    rollback,
)
from xds_server.store.data_dir import DATA_DIR_ENV, default_data_dir
from xds_server.store.sqlite import SqliteStore

__all__ = [
    "API_OWNER",
    "DATA_DIR_ENV",
    "SOURCES",
    "AuditEntry",
    "ConfigStore",
    "Conflict",
    "DataDirInUse",
    "Listing",
    "NotFound",
    "Record",
    "RecordConflict",
    "ShardVersion",
    "Source",
    "SqliteStore",
    "StoreError",
    "Version",
    "Write",
    "content_hash",
    "default_data_dir",
    "file_owner",
    "rollback",
]
