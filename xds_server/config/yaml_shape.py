"""Bounds on a YAML document's shape, checked on its event stream before it is built.

PyYAML builds a document recursively (2,000 nested ``[`` end in RecursionError) and
an alias is a reference, so a 487-byte file of nested aliases becomes a value of
10^8 nodes the moment anything walks it (validation, an error message, a dump). The
parser itself is a loop, so walking its events costs time linear in the text and
memory linear in the nesting: depth and the size every alias stands for are known
before a single object exists.

Policy: aliases are allowed, counted at their expanded size. Refusing them outright
would be simpler, but ``env: &common {...}`` reused by several DALs is a legitimate
use, and the bound on the expanded size makes the bomb a short error all the same.
"""

from __future__ import annotations

from dataclasses import dataclass

import yaml

from .errors import quote

# libyaml when it is there (ten times faster, and it refuses nesting past 1,000 by
# itself); the pure-Python parser otherwise, which is iterative too.
SafeLoader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class ShapeError(ValueError):
    def __init__(self, line: int, message: str):
        self.line = line
        super().__init__(message)


@dataclass
class _Frame:
    anchor: str | None
    nodes: int = 1  # the collection itself


def check_shape(text: str, max_depth: int, max_nodes: int) -> None:
    """Raise ShapeError if ``text`` nests deeper than ``max_depth`` or expands (aliases
    included) to more than ``max_nodes`` nodes; malformed YAML raises yaml.YAMLError,
    as the loader would."""
    sizes: dict[str, int] = {}
    stack: list[_Frame] = [_Frame(None, 0)]
    for event in yaml.parse(text, Loader=SafeLoader):
        if isinstance(event, yaml.CollectionStartEvent):
            if len(stack) > max_depth:
                raise ShapeError(
                    _line(event),
                    f"nested deeper than {max_depth} levels; a shard file needs a few",
                )
            stack.append(_Frame(event.anchor))
            continue
        if isinstance(event, yaml.CollectionEndEvent):
            frame = stack.pop()
            if frame.anchor is not None:
                sizes[frame.anchor] = frame.nodes
            added = frame.nodes
        elif isinstance(event, yaml.ScalarEvent):
            if event.anchor is not None:
                sizes[event.anchor] = 1
            added = 1
        elif isinstance(event, yaml.AliasEvent):
            added = sizes.get(event.anchor or "", 1)
        else:
            continue
        top = stack[-1]
        top.nodes += added
        if top.nodes > max_nodes:
            what = (
                f"alias *{quote(event.anchor, 40).strip(chr(39))} "
                if isinstance(event, yaml.AliasEvent)
                else ""
            )
            raise ShapeError(
                _line(event),
                f"{what}makes the document more than {max_nodes} values once aliases "
                "are expanded; write the values out, or reuse smaller anchors",
            )


def _line(event: yaml.Event) -> int:
    mark = event.start_mark
    return mark.line + 1 if mark is not None else 0
