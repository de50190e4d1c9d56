from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Position(_message.Message):
    __slots__ = ("id", "key")
    ID_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    id: str
    key: bytes
    def __init__(self, id: _Optional[str] = ..., key: _Optional[bytes] = ...) -> None: ...

class Range(_message.Message):
    __slots__ = ("start", "end")
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    start: Position
    end: Position
    def __init__(self, start: _Optional[_Union[Position, _Mapping]] = ..., end: _Optional[_Union[Position, _Mapping]] = ...) -> None: ...

class NamespacesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class NamespacesResponse(_message.Message):
    __slots__ = ("namespaces",)
    NAMESPACES_FIELD_NUMBER: _ClassVar[int]
    namespaces: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, namespaces: _Optional[_Iterable[str]] = ...) -> None: ...

class ExportRequest(_message.Message):
    __slots__ = ("namespace", "cursor", "page_size_bytes", "range")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    RANGE_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    cursor: bytes
    page_size_bytes: int
    range: Range
    def __init__(self, namespace: _Optional[str] = ..., cursor: _Optional[bytes] = ..., page_size_bytes: _Optional[int] = ..., range: _Optional[_Union[Range, _Mapping]] = ...) -> None: ...

class ExportResponse(_message.Message):
    __slots__ = ("page", "items", "size_bytes", "next_cursor")
    PAGE_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    NEXT_CURSOR_FIELD_NUMBER: _ClassVar[int]
    page: bytes
    items: int
    size_bytes: int
    next_cursor: bytes
    def __init__(self, page: _Optional[bytes] = ..., items: _Optional[int] = ..., size_bytes: _Optional[int] = ..., next_cursor: _Optional[bytes] = ...) -> None: ...

class ExportPage(_message.Message):
    __slots__ = ("records",)
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    records: _containers.RepeatedCompositeFieldContainer[ExportRecord]
    def __init__(self, records: _Optional[_Iterable[_Union[ExportRecord, _Mapping]]] = ...) -> None: ...

class ExportRecord(_message.Message):
    __slots__ = ("id", "items")
    ID_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    id: str
    items: _containers.RepeatedCompositeFieldContainer[ExportItem]
    def __init__(self, id: _Optional[str] = ..., items: _Optional[_Iterable[_Union[ExportItem, _Mapping]]] = ...) -> None: ...

class ExportItem(_message.Message):
    __slots__ = ("key", "value", "write_time_us", "writer", "deleted", "chunk")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    WRITE_TIME_US_FIELD_NUMBER: _ClassVar[int]
    WRITER_FIELD_NUMBER: _ClassVar[int]
    DELETED_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    key: bytes
    value: bytes
    write_time_us: int
    writer: bytes
    deleted: bool
    chunk: Chunk
    def __init__(self, key: _Optional[bytes] = ..., value: _Optional[bytes] = ..., write_time_us: _Optional[int] = ..., writer: _Optional[bytes] = ..., deleted: _Optional[bool] = ..., chunk: _Optional[_Union[Chunk, _Mapping]] = ...) -> None: ...

class Chunk(_message.Message):
    __slots__ = ("index", "count", "total_size", "chunk_size")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    TOTAL_SIZE_FIELD_NUMBER: _ClassVar[int]
    CHUNK_SIZE_FIELD_NUMBER: _ClassVar[int]
    index: int
    count: int
    total_size: int
    chunk_size: int
    def __init__(self, index: _Optional[int] = ..., count: _Optional[int] = ..., total_size: _Optional[int] = ..., chunk_size: _Optional[int] = ...) -> None: ...

class ImportRequest(_message.Message):
    __slots__ = ("namespace", "page", "repair")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    PAGE_FIELD_NUMBER: _ClassVar[int]
    REPAIR_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    page: bytes
    repair: bool
    def __init__(self, namespace: _Optional[str] = ..., page: _Optional[bytes] = ..., repair: _Optional[bool] = ...) -> None: ...

class ImportResponse(_message.Message):
    __slots__ = ("applied", "skipped_as_older")
    APPLIED_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_AS_OLDER_FIELD_NUMBER: _ClassVar[int]
    applied: int
    skipped_as_older: int
    def __init__(self, applied: _Optional[int] = ..., skipped_as_older: _Optional[int] = ...) -> None: ...

class DigestRequest(_message.Message):
    __slots__ = ("namespace", "ranges", "count_only")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    RANGES_FIELD_NUMBER: _ClassVar[int]
    COUNT_ONLY_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    ranges: _containers.RepeatedCompositeFieldContainer[Range]
    count_only: bool
    def __init__(self, namespace: _Optional[str] = ..., ranges: _Optional[_Iterable[_Union[Range, _Mapping]]] = ..., count_only: _Optional[bool] = ...) -> None: ...

class RangeDigest(_message.Message):
    __slots__ = ("count", "hash")
    COUNT_FIELD_NUMBER: _ClassVar[int]
    HASH_FIELD_NUMBER: _ClassVar[int]
    count: int
    hash: bytes
    def __init__(self, count: _Optional[int] = ..., hash: _Optional[bytes] = ...) -> None: ...

class DigestResponse(_message.Message):
    __slots__ = ("digests",)
    DIGESTS_FIELD_NUMBER: _ClassVar[int]
    digests: _containers.RepeatedCompositeFieldContainer[RangeDigest]
    def __init__(self, digests: _Optional[_Iterable[_Union[RangeDigest, _Mapping]]] = ...) -> None: ...

class SplitRequest(_message.Message):
    __slots__ = ("namespace", "range", "parts")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    RANGE_FIELD_NUMBER: _ClassVar[int]
    PARTS_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    range: Range
    parts: int
    def __init__(self, namespace: _Optional[str] = ..., range: _Optional[_Union[Range, _Mapping]] = ..., parts: _Optional[int] = ...) -> None: ...

class SplitResponse(_message.Message):
    __slots__ = ("boundaries",)
    BOUNDARIES_FIELD_NUMBER: _ClassVar[int]
    boundaries: _containers.RepeatedCompositeFieldContainer[Position]
    def __init__(self, boundaries: _Optional[_Iterable[_Union[Position, _Mapping]]] = ...) -> None: ...

class EntriesRequest(_message.Message):
    __slots__ = ("namespace", "range", "limit")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    RANGE_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    range: Range
    limit: int
    def __init__(self, namespace: _Optional[str] = ..., range: _Optional[_Union[Range, _Mapping]] = ..., limit: _Optional[int] = ...) -> None: ...

class Entry(_message.Message):
    __slots__ = ("id", "key", "write_time_us", "writer", "value_hash", "size")
    ID_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    WRITE_TIME_US_FIELD_NUMBER: _ClassVar[int]
    WRITER_FIELD_NUMBER: _ClassVar[int]
    VALUE_HASH_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    id: str
    key: bytes
    write_time_us: int
    writer: bytes
    value_hash: bytes
    size: int
    def __init__(self, id: _Optional[str] = ..., key: _Optional[bytes] = ..., write_time_us: _Optional[int] = ..., writer: _Optional[bytes] = ..., value_hash: _Optional[bytes] = ..., size: _Optional[int] = ...) -> None: ...

class EntriesResponse(_message.Message):
    __slots__ = ("entries", "truncated")
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[Entry]
    truncated: bool
    def __init__(self, entries: _Optional[_Iterable[_Union[Entry, _Mapping]]] = ..., truncated: _Optional[bool] = ...) -> None: ...
