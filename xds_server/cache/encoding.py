"""Protobuf wire-format primitives and the two resource envelopes.

Marshal once: a resource is wrapped in its envelopes when its snapshot is built, and
those bytes are reused for every node. The envelopes are ``google.protobuf.Any`` (a
state-of-the-world response carries a list of them) and ``discovery.v3.Resource`` (a
delta response carries a list of those). Protobuf's wire format lets a message be
written by concatenating encoded fields, so these bytes are spliced into responses
as they are. Field numbers come from the generated descriptors, never typed by hand.
"""

from __future__ import annotations

from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import any_pb2
from google.protobuf.message import Message

_WIRETYPE_LEN = 2


def varint(value: int) -> bytes:
    """Base-128 varint, as protobuf writes lengths and tags."""
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def len_tag(field_number: int) -> bytes:
    """The tag of a length-delimited field (bytes, string or sub-message)."""
    return varint((field_number << 3) | _WIRETYPE_LEN)


def len_field(tag: bytes, payload: bytes) -> bytes:
    """One length-delimited field: tag, length, payload."""
    return b"".join((tag, varint(len(payload)), payload))


def _number(message: type[Message], name: str) -> int:
    return message.DESCRIPTOR.fields_by_name[name].number


_ANY_TYPE_URL = len_tag(_number(any_pb2.Any, "type_url"))
_ANY_VALUE = len_tag(_number(any_pb2.Any, "value"))
_RESOURCE_NAME = len_tag(_number(discovery_pb2.Resource, "name"))
_RESOURCE_VERSION = len_tag(_number(discovery_pb2.Resource, "version"))
_RESOURCE_RESOURCE = len_tag(_number(discovery_pb2.Resource, "resource"))


def encode_any(type_url: str, value: bytes) -> bytes:
    """``google.protobuf.Any{type_url, value}``, serialized."""
    return len_field(_ANY_TYPE_URL, type_url.encode()) + len_field(_ANY_VALUE, value)


def encode_resource(name: str, version: str, any_bytes: bytes) -> bytes:
    """``discovery.v3.Resource{name, version, resource}``, serialized."""
    return b"".join(
        (
            len_field(_RESOURCE_NAME, name.encode()),
            len_field(_RESOURCE_VERSION, version.encode()),
            len_field(_RESOURCE_RESOURCE, any_bytes),
        )
    )
