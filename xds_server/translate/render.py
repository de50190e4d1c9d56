"""Envoy resources → YAML, as ``dgw render`` prints them and golden files hold them."""

from __future__ import annotations

from collections import OrderedDict

import yaml
from google.protobuf.json_format import MessageToDict

from xds_server.resources import (
    CLUSTER,
    ENDPOINT,
    LISTENER,
    ROUTE,
    SECRET,
    SHORT_NAMES,
    Resources,
)

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
            MessageToDict(message, preserving_proto_field_name=True)
            for _, message in sorted(resources.of(type_url).items())
        ]
        for type_url in _READING_ORDER
        if resources.of(type_url)
    }
    return yaml.dump(document, Dumper=_Dumper, sort_keys=False, default_flow_style=False)
