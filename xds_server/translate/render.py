"""Envoy resources → YAML, as ``dgw render`` prints them and golden files hold them;
and the effective resilience in words, which ``dgw render`` prints above them."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import yaml
from google.protobuf import any_pb2, descriptor_pool, message_factory
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message

from xds_server.config import RuntimeConfig
from xds_server.config.resilience import describe, effective_policy, tier_of
from xds_server.resources import (
    CLUSTER,
    ENDPOINT,
    LISTENER,
    ROUTE,
    SECRET,
    SHORT_NAMES,
    Resources,
)

from .ir import GatewayIR, GrpcMethods, HttpMethods, RouteClass

# The order a reader follows a request in: where it arrives, where it is routed,
# which upstream takes it, which hosts that upstream has.
_READING_ORDER = (LISTENER, ROUTE, CLUSTER, ENDPOINT, SECRET)


class _Dumper(yaml.SafeDumper):
    """MessageToDict returns unpacked ``Any`` fields as OrderedDicts; print them as
    plain mappings, keeping the proto field order."""


_Dumper.add_representer(OrderedDict, _Dumper.represent_dict)


def render_yaml(resources: Resources) -> str:
    """Every non-empty resource type as a list under its short name, sorted by name."""
    document = {
        SHORT_NAMES[type_url]: [
            _to_dict(message)
            for _, message in sorted(resources.of(type_url).items())
        ]
        for type_url in _READING_ORDER
        if resources.of(type_url)
    }
    return yaml.dump(document, Dumper=_Dumper, sort_keys=False, default_flow_style=False)


def render_resource(message: Message) -> str:
    """One resource as YAML, as ``render_yaml`` prints it in its list."""
    return str(yaml.dump(_to_dict(message), Dumper=_Dumper, sort_keys=False, default_flow_style=False))


def _to_dict(message: Message) -> dict[str, Any]:
    """MessageToDict, with every proto map sorted by key: map iteration order is not
    stable from run to run, and a golden file must be."""
    out = MessageToDict(message, preserving_proto_field_name=True)
    _sort_maps(message, out)
    return out


def _sort_maps(message: Message, out: dict[str, Any]) -> None:
    if isinstance(message, any_pb2.Any):
        inner = _unpacked(message)
        if inner is not None:
            _sort_maps(inner, out)
        return
    for field, value in message.ListFields():
        if field.type != FieldDescriptor.TYPE_MESSAGE or field.name not in out:
            continue
        entry = field.message_type
        if entry is not None and entry.GetOptions().map_entry:
            out[field.name] = dict(sorted(out[field.name].items()))
            if entry.fields_by_name["value"].type == FieldDescriptor.TYPE_MESSAGE:
                for key in out[field.name]:
                    _sort_maps(value[key], out[field.name][key])
        elif field.is_repeated:
            for item, item_out in zip(value, out[field.name], strict=True):
                _sort_maps(item, item_out)
        elif isinstance(out[field.name], dict):
            _sort_maps(value, out[field.name])


def _unpacked(packed: any_pb2.Any) -> Message | None:
    name = packed.type_url.rpartition("/")[2]
    try:
        descriptor = descriptor_pool.Default().FindMessageTypeByName(name)
    except KeyError:
        return None
    inner = message_factory.GetMessageClass(descriptor)()
    packed.Unpack(inner)
    return inner


def resilience_summary(cfg: RuntimeConfig, gateway: GatewayIR) -> list[str]:
    """The effective resilience of each DAL and listener, in words (``dgw render``)."""
    lines = [f"effective resilience (service tier {tier_of(cfg)} defaults < shard < DAL; docs/resilience.md):"]
    dals = sorted({u.dal for u in gateway.upstreams})
    lines += [f"  DAL {dal}: {describe(effective_policy(cfg, dal))}" for dal in dals]
    for lst in gateway.listeners:
        if not lst.route_classes:
            continue
        classes = "; ".join(_route_class(c) for c in lst.route_classes)
        lines.append(f"  listener {lst.listener} ({lst.protocol}): {classes}")
        low = lst.low_priority
        if low is not None:
            who = [f"callers {', '.join(low.callers)}"] if low.callers else []
            if low.header_from_anyone:
                who.append(f"any request with {low.header}: low")
            elif low.header_setters:
                who.append(f"{low.header}: low from {', '.join(low.header_setters)}")
            lines.append(f"    low priority (shed first): {'; '.join(who)}")
    return lines


def _route_class(c: RouteClass) -> str:
    if isinstance(c.match, GrpcMethods):
        what = f"{c.method_class} ({len(c.match.paths)} method patterns)"
    elif isinstance(c.match, HttpMethods):
        what = f"{c.method_class} ({'/'.join(c.match.methods)})"
    else:
        what = "other writes" if c.method_class == "writes" else c.method_class
    retry = c.retry
    if retry is None:
        how = "not retried"
    elif retry.per_try_timeout_s is None:
        how = "retried only if never sent"
    else:
        how = f"retried up to {retry.attempts}x" + (", hedged" if retry.hedge else "")
    return f"{what} {how}" + ("" if c.timeout_s else ", no time limit")
