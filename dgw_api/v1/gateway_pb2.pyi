from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Health(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    HEALTH_UNKNOWN: _ClassVar[Health]
    STARTING: _ClassVar[Health]
    HEALTHY: _ClassVar[Health]
    UNHEALTHY: _ClassVar[Health]
    DRAINING: _ClassVar[Health]
HEALTH_UNKNOWN: Health
STARTING: Health
HEALTHY: Health
UNHEALTHY: Health
DRAINING: Health

class Endpoint(_message.Message):
    __slots__ = ("dal", "listener", "address", "port", "health", "message")
    DAL_FIELD_NUMBER: _ClassVar[int]
    LISTENER_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    HEALTH_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    dal: str
    listener: str
    address: str
    port: int
    health: Health
    message: str
    def __init__(self, dal: _Optional[str] = ..., listener: _Optional[str] = ..., address: _Optional[str] = ..., port: _Optional[int] = ..., health: _Optional[_Union[Health, str]] = ..., message: _Optional[str] = ...) -> None: ...

class NodeReport(_message.Message):
    __slots__ = ("shard", "node_id", "endpoints", "registrations", "host_address", "status", "location")
    class StatusEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SHARD_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    REGISTRATIONS_FIELD_NUMBER: _ClassVar[int]
    HOST_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    LOCATION_FIELD_NUMBER: _ClassVar[int]
    shard: str
    node_id: str
    endpoints: _containers.RepeatedCompositeFieldContainer[Endpoint]
    registrations: _containers.RepeatedScalarFieldContainer[str]
    host_address: str
    status: _containers.ScalarMap[str, str]
    location: Location
    def __init__(self, shard: _Optional[str] = ..., node_id: _Optional[str] = ..., endpoints: _Optional[_Iterable[_Union[Endpoint, _Mapping]]] = ..., registrations: _Optional[_Iterable[str]] = ..., host_address: _Optional[str] = ..., status: _Optional[_Mapping[str, str]] = ..., location: _Optional[_Union[Location, _Mapping]] = ...) -> None: ...

class Location(_message.Message):
    __slots__ = ("account", "region", "stack")
    ACCOUNT_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    STACK_FIELD_NUMBER: _ClassVar[int]
    account: str
    region: str
    stack: str
    def __init__(self, account: _Optional[str] = ..., region: _Optional[str] = ..., stack: _Optional[str] = ...) -> None: ...

class ReportAck(_message.Message):
    __slots__ = ("generation",)
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    generation: int
    def __init__(self, generation: _Optional[int] = ...) -> None: ...

class WatchRequest(_message.Message):
    __slots__ = ("shard", "node_id")
    SHARD_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    shard: str
    node_id: str
    def __init__(self, shard: _Optional[str] = ..., node_id: _Optional[str] = ...) -> None: ...

class ShardConfig(_message.Message):
    __slots__ = ("shard", "version", "yaml", "pins")
    SHARD_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    YAML_FIELD_NUMBER: _ClassVar[int]
    PINS_FIELD_NUMBER: _ClassVar[int]
    shard: str
    version: str
    yaml: str
    pins: _containers.RepeatedCompositeFieldContainer[Pin]
    def __init__(self, shard: _Optional[str] = ..., version: _Optional[str] = ..., yaml: _Optional[str] = ..., pins: _Optional[_Iterable[_Union[Pin, _Mapping]]] = ...) -> None: ...

class Pin(_message.Message):
    __slots__ = ("artifact", "kind", "digest", "source", "ref")
    ARTIFACT_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    REF_FIELD_NUMBER: _ClassVar[int]
    artifact: str
    kind: str
    digest: str
    source: str
    ref: str
    def __init__(self, artifact: _Optional[str] = ..., kind: _Optional[str] = ..., digest: _Optional[str] = ..., source: _Optional[str] = ..., ref: _Optional[str] = ...) -> None: ...

class SignRequest(_message.Message):
    __slots__ = ("shard", "node_id", "csr_pem", "join_token")
    SHARD_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    CSR_PEM_FIELD_NUMBER: _ClassVar[int]
    JOIN_TOKEN_FIELD_NUMBER: _ClassVar[int]
    shard: str
    node_id: str
    csr_pem: bytes
    join_token: str
    def __init__(self, shard: _Optional[str] = ..., node_id: _Optional[str] = ..., csr_pem: _Optional[bytes] = ..., join_token: _Optional[str] = ...) -> None: ...

class SignResponse(_message.Message):
    __slots__ = ("certificate_chain_pem", "trust_bundle_pem")
    CERTIFICATE_CHAIN_PEM_FIELD_NUMBER: _ClassVar[int]
    TRUST_BUNDLE_PEM_FIELD_NUMBER: _ClassVar[int]
    certificate_chain_pem: bytes
    trust_bundle_pem: bytes
    def __init__(self, certificate_chain_pem: _Optional[bytes] = ..., trust_bundle_pem: _Optional[bytes] = ...) -> None: ...

class Histogram(_message.Message):
    __slots__ = ("name", "bounds", "counts", "total")
    NAME_FIELD_NUMBER: _ClassVar[int]
    BOUNDS_FIELD_NUMBER: _ClassVar[int]
    COUNTS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    name: str
    bounds: _containers.RepeatedScalarFieldContainer[float]
    counts: _containers.RepeatedScalarFieldContainer[int]
    total: int
    def __init__(self, name: _Optional[str] = ..., bounds: _Optional[_Iterable[float]] = ..., counts: _Optional[_Iterable[int]] = ..., total: _Optional[int] = ...) -> None: ...

class EnvoyStats(_message.Message):
    __slots__ = ("shard", "node_id", "envoy_epoch", "counters", "histograms")
    class CountersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    SHARD_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ENVOY_EPOCH_FIELD_NUMBER: _ClassVar[int]
    COUNTERS_FIELD_NUMBER: _ClassVar[int]
    HISTOGRAMS_FIELD_NUMBER: _ClassVar[int]
    shard: str
    node_id: str
    envoy_epoch: str
    counters: _containers.ScalarMap[str, int]
    histograms: _containers.RepeatedCompositeFieldContainer[Histogram]
    def __init__(self, shard: _Optional[str] = ..., node_id: _Optional[str] = ..., envoy_epoch: _Optional[str] = ..., counters: _Optional[_Mapping[str, int]] = ..., histograms: _Optional[_Iterable[_Union[Histogram, _Mapping]]] = ...) -> None: ...
