from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class IdempotencyToken(_message.Message):
    __slots__ = ("generation_time_us", "id", "write_time_us")
    GENERATION_TIME_US_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    WRITE_TIME_US_FIELD_NUMBER: _ClassVar[int]
    generation_time_us: int
    id: bytes
    write_time_us: int
    def __init__(self, generation_time_us: _Optional[int] = ..., id: _Optional[bytes] = ..., write_time_us: _Optional[int] = ...) -> None: ...

class Item(_message.Message):
    __slots__ = ("key", "value", "chunk", "part", "write_time_us", "writer_id")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    PART_FIELD_NUMBER: _ClassVar[int]
    WRITE_TIME_US_FIELD_NUMBER: _ClassVar[int]
    WRITER_ID_FIELD_NUMBER: _ClassVar[int]
    key: bytes
    value: bytes
    chunk: Chunk
    part: ValuePart
    write_time_us: int
    writer_id: bytes
    def __init__(self, key: _Optional[bytes] = ..., value: _Optional[bytes] = ..., chunk: _Optional[_Union[Chunk, _Mapping]] = ..., part: _Optional[_Union[ValuePart, _Mapping]] = ..., write_time_us: _Optional[int] = ..., writer_id: _Optional[bytes] = ...) -> None: ...

class Chunk(_message.Message):
    __slots__ = ("index", "count", "total_size", "commit")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    TOTAL_SIZE_FIELD_NUMBER: _ClassVar[int]
    COMMIT_FIELD_NUMBER: _ClassVar[int]
    index: int
    count: int
    total_size: int
    commit: bool
    def __init__(self, index: _Optional[int] = ..., count: _Optional[int] = ..., total_size: _Optional[int] = ..., commit: _Optional[bool] = ...) -> None: ...

class ValuePart(_message.Message):
    __slots__ = ("offset", "total_size")
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    TOTAL_SIZE_FIELD_NUMBER: _ClassVar[int]
    offset: int
    total_size: int
    def __init__(self, offset: _Optional[int] = ..., total_size: _Optional[int] = ...) -> None: ...

class Predicate(_message.Message):
    __slots__ = ("all", "keys", "range")
    ALL_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    RANGE_FIELD_NUMBER: _ClassVar[int]
    all: AllItems
    keys: Keys
    range: KeyRange
    def __init__(self, all: _Optional[_Union[AllItems, _Mapping]] = ..., keys: _Optional[_Union[Keys, _Mapping]] = ..., range: _Optional[_Union[KeyRange, _Mapping]] = ...) -> None: ...

class AllItems(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Keys(_message.Message):
    __slots__ = ("keys",)
    KEYS_FIELD_NUMBER: _ClassVar[int]
    keys: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, keys: _Optional[_Iterable[bytes]] = ...) -> None: ...

class KeyRange(_message.Message):
    __slots__ = ("start", "end")
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    start: bytes
    end: bytes
    def __init__(self, start: _Optional[bytes] = ..., end: _Optional[bytes] = ...) -> None: ...

class PutItemsRequest(_message.Message):
    __slots__ = ("namespace", "id", "items", "idempotency_token")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_TOKEN_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    id: str
    items: _containers.RepeatedCompositeFieldContainer[Item]
    idempotency_token: IdempotencyToken
    def __init__(self, namespace: _Optional[str] = ..., id: _Optional[str] = ..., items: _Optional[_Iterable[_Union[Item, _Mapping]]] = ..., idempotency_token: _Optional[_Union[IdempotencyToken, _Mapping]] = ...) -> None: ...

class DeleteItemsRequest(_message.Message):
    __slots__ = ("namespace", "id", "predicate", "idempotency_token")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    PREDICATE_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_TOKEN_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    id: str
    predicate: Predicate
    idempotency_token: IdempotencyToken
    def __init__(self, namespace: _Optional[str] = ..., id: _Optional[str] = ..., predicate: _Optional[_Union[Predicate, _Mapping]] = ..., idempotency_token: _Optional[_Union[IdempotencyToken, _Mapping]] = ...) -> None: ...

class Mutation(_message.Message):
    __slots__ = ("put", "delete")
    PUT_FIELD_NUMBER: _ClassVar[int]
    DELETE_FIELD_NUMBER: _ClassVar[int]
    put: Item
    delete: Predicate
    def __init__(self, put: _Optional[_Union[Item, _Mapping]] = ..., delete: _Optional[_Union[Predicate, _Mapping]] = ...) -> None: ...

class MutateItemsRequest(_message.Message):
    __slots__ = ("namespace", "id", "mutations", "idempotency_token")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    MUTATIONS_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_TOKEN_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    id: str
    mutations: _containers.RepeatedCompositeFieldContainer[Mutation]
    idempotency_token: IdempotencyToken
    def __init__(self, namespace: _Optional[str] = ..., id: _Optional[str] = ..., mutations: _Optional[_Iterable[_Union[Mutation, _Mapping]]] = ..., idempotency_token: _Optional[_Union[IdempotencyToken, _Mapping]] = ...) -> None: ...

class WriteResponse(_message.Message):
    __slots__ = ("applied",)
    APPLIED_FIELD_NUMBER: _ClassVar[int]
    applied: int
    def __init__(self, applied: _Optional[int] = ...) -> None: ...

class GetItemsRequest(_message.Message):
    __slots__ = ("namespace", "id", "predicate", "page_size_bytes", "page_token", "with_write_times")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    PREDICATE_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    WITH_WRITE_TIMES_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    id: str
    predicate: Predicate
    page_size_bytes: int
    page_token: bytes
    with_write_times: bool
    def __init__(self, namespace: _Optional[str] = ..., id: _Optional[str] = ..., predicate: _Optional[_Union[Predicate, _Mapping]] = ..., page_size_bytes: _Optional[int] = ..., page_token: _Optional[bytes] = ..., with_write_times: _Optional[bool] = ...) -> None: ...

class GetItemsResponse(_message.Message):
    __slots__ = ("items", "next_page_token")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[Item]
    next_page_token: bytes
    def __init__(self, items: _Optional[_Iterable[_Union[Item, _Mapping]]] = ..., next_page_token: _Optional[bytes] = ...) -> None: ...

class ScanItemsRequest(_message.Message):
    __slots__ = ("namespace", "cursor", "page_size_bytes", "with_write_times")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    WITH_WRITE_TIMES_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    cursor: bytes
    page_size_bytes: int
    with_write_times: bool
    def __init__(self, namespace: _Optional[str] = ..., cursor: _Optional[bytes] = ..., page_size_bytes: _Optional[int] = ..., with_write_times: _Optional[bool] = ...) -> None: ...

class Record(_message.Message):
    __slots__ = ("id", "items")
    ID_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    id: str
    items: _containers.RepeatedCompositeFieldContainer[Item]
    def __init__(self, id: _Optional[str] = ..., items: _Optional[_Iterable[_Union[Item, _Mapping]]] = ...) -> None: ...

class ScanItemsResponse(_message.Message):
    __slots__ = ("records", "next_cursor")
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    NEXT_CURSOR_FIELD_NUMBER: _ClassVar[int]
    records: _containers.RepeatedCompositeFieldContainer[Record]
    next_cursor: bytes
    def __init__(self, records: _Optional[_Iterable[_Union[Record, _Mapping]]] = ..., next_cursor: _Optional[bytes] = ...) -> None: ...
