"""Wiring operations on a shard's text: shadow, split, promote, clear. Pure functions.

Each takes the shard file's text as written and returns the new text, changing only
the ``wiring`` mapping: the user's comments, key order, quoting and ``${VAR}``
references elsewhere stay as they were (ruamel.yaml's round-trip; PyYAML stays the
loader that decides what the text means). The result is checked like any edit by the
caller (load, validate, translate) before it is stored.

What decides who serves a listener (``config.semantics.listener_topology``): on every
listener two wired DALs both serve, the wiring's target is not a primary; the one
server left is. So:

- ``shadow X Y [percent]``: ``wiring.X = {mode: shadow, target: Y[, percent]}``;
- ``split X Y percent``: ``wiring.X = {mode: split, target: Y, percent}``;
- ``promote Y``: the DAL X wired to Y (``wiring.X.target == Y``) gives way:
  ``wiring.X`` goes and ``wiring.Y = {mode: shadow, target: X}``: Y becomes the
  primary of X's listeners and X keeps receiving every request as Y's shadow, so a
  rollback to the previous version loses nothing X should have seen;
- ``clear X``: ``wiring.X`` goes;
- ``retire X`` (a migration's finish): the DAL X goes, with every wiring that names it.

``traffic: writes`` (shadow, promote) makes the copy one of writes only, and
``read_percent`` (shadow of writes) moves that share of reads to the target: the
settings a data migration's phases use (``xds_server.migrate``).
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap
from ruamel.yaml.error import YAMLError as RuamelError


class WiringError(ValueError):
    """The operation cannot be done on this config; the message names the DAL and what
    exists (``path`` is the key it concerns, for a 400 problem)."""

    def __init__(self, path: str, message: str):
        self.path = path
        super().__init__(message)


@dataclass(frozen=True)
class Shadow:
    source: str
    target: str
    percent: float | None = None
    traffic: str | None = None  # "writes": a copy of writes only
    read_percent: float | None = None  # with traffic writes: reads moved to the target


@dataclass(frozen=True)
class Split:
    source: str
    target: str
    percent: float


@dataclass(frozen=True)
class Promote:
    target: str
    traffic: str | None = None  # "writes": the old primary keeps a copy of writes only


@dataclass(frozen=True)
class Clear:
    source: str


@dataclass(frozen=True)
class Retire:
    dal: str


WiringOp = Shadow | Split | Promote | Clear | Retire
OPS = ("shadow", "split", "promote", "clear")


def apply(text: str, op: WiringOp) -> str:
    """The shard text with ``op`` applied to its wiring."""
    doc = _Doc(text)
    dals = _dals(doc.data)
    wiring = doc.data.get("wiring")
    if wiring is None:
        wiring = CommentedMap()
        doc.data["wiring"] = wiring
    elif not isinstance(wiring, dict):
        raise WiringError("wiring", "wiring must be a mapping of source DAL → {mode, target}")
    match op:
        case Shadow(source, target, percent, traffic, read_percent):
            _check_pair(dals, source, target)
            _check_percent(percent)
            _check_percent(read_percent)
            wiring[source] = _entry("shadow", target, percent, traffic, read_percent)
        case Split(source, target, percent):
            _check_pair(dals, source, target)
            _check_percent(percent)
            wiring[source] = _entry("split", target, percent)
        case Promote(target, traffic):
            _check_dal(dals, target, "target")
            source = _wired_to(wiring, target)
            if target in wiring:
                raise WiringError(
                    f"wiring.{target}",
                    f"DAL {target!r} already wires its own traffic to "
                    f"{_target_of(wiring[target])!r}; clear {target!r} first",
                )
            del wiring[source]
            wiring[target] = _entry("shadow", source, None, traffic)
        case Retire(dal):
            _check_dal(dals, dal, "source")
            for source in [s for s, w in wiring.items() if str(s) == dal or _target_of(w) == dal]:
                del wiring[source]
            for key in ("container_dals", "network_dals"):
                section = doc.data.get(key)
                if isinstance(section, dict) and dal in section:
                    del section[dal]
                    if not section:
                        del doc.data[key]
        case Clear(source):
            if source not in wiring:
                raise WiringError(
                    f"wiring.{source}",
                    f"DAL {source!r} has no wiring to clear; wired sources: {_names(wiring)}",
                )
            del wiring[source]
    if not wiring:
        del doc.data["wiring"]
    return doc.dump()


# --- helpers ------------------------------------------------------------------------

# `${VAR}`, `${VAR:-default}`, `$$` and `$VAR` are interpolated before the text is YAML:
# as written they need not be valid YAML (`${X:-8080}` in a flow mapping is not), so
# they are swapped for plain placeholders while ruamel reads and writes the text.
_INTERPOLATION = re.compile(r"\$\$?\{[^}\n]*\}|\$\$|\$[A-Za-z_][A-Za-z0-9_]*")


class _Doc:
    def __init__(self, text: str):
        self.holes: dict[str, str] = {}
        self._yaml = YAML(typ="rt")
        self._yaml.preserve_quotes = True
        self._yaml.width = 4096
        # The text's indentation, so untouched blocks are written back as they were.
        offset = _dash_offset(text)
        self._yaml.indent(mapping=2, sequence=offset + 2, offset=offset)
        marked = _INTERPOLATION.sub(self._hole, text)
        try:
            data = self._yaml.load(marked)
        except RuamelError as e:
            raise WiringError("", f"the shard text is not valid YAML: {str(e)[:200]}") from None
        if not isinstance(data, CommentedMap):
            raise WiringError("", "the shard text must be a mapping of keys")
        self.data = data

    def _hole(self, m: re.Match[str]) -> str:
        key = f"dgwhole{len(self.holes):04d}x"
        self.holes[key] = m.group(0)
        return key

    def dump(self) -> str:
        out = io.StringIO()
        self._yaml.dump(self.data, out)
        text = out.getvalue()
        for key, original in self.holes.items():
            text = text.replace(key, original)
        return text


def _dash_offset(text: str) -> int:
    """How far the text indents a block sequence's ``-`` under its key (``key:`` then
    ``  - item`` is 2), from the first one; 0 if it has none."""
    previous = ""
    for line in text.splitlines():
        dash = re.match(r"^( *)- ", line)
        if dash and previous.rstrip().endswith(":"):
            return max(0, len(dash.group(1)) - (len(previous) - len(previous.lstrip(" "))))
        if line.strip() and not line.lstrip().startswith("#"):
            previous = line
    return 0


def _dals(doc: Mapping[str, Any]) -> list[str]:
    names: list[str] = []
    for key in ("container_dals", "network_dals"):
        section = doc.get(key)
        if isinstance(section, Mapping):
            names.extend(str(n) for n in section)
    return names


def _names(items: Iterable[Any]) -> str:
    listed = sorted(str(n) for n in items)
    return ", ".join(listed) if listed else "none"


def _check_dal(dals: list[str], name: str, role: str) -> None:
    if name not in dals:
        raise WiringError(
            f"wiring.{name}" if role == "source" else "wiring",
            f"{role} DAL {name!r} is not a DAL of this shard; its DALs: {_names(dals)}",
        )


def _check_pair(dals: list[str], source: str, target: str) -> None:
    _check_dal(dals, source, "source")
    _check_dal(dals, target, "target")
    if source == target:
        raise WiringError(f"wiring.{source}", f"DAL {source!r} cannot be wired to itself")


def _check_percent(percent: float | None) -> None:
    if percent is not None and not 0 <= percent <= 100:
        raise WiringError("wiring", f"percent {percent} must be between 0 and 100")


def _target_of(entry: Any) -> str:
    return str(entry.get("target")) if isinstance(entry, Mapping) else "?"


def _wired_to(wiring: Mapping[Any, Any], target: str) -> str:
    sources = sorted(str(s) for s, w in wiring.items() if _target_of(w) == target)
    if not sources:
        wired = ", ".join(f"{s} → {_target_of(w)}" for s, w in sorted(wiring.items())) or "none"
        raise WiringError(
            "wiring",
            f"DAL {target!r} is not the target of any wiring, so there is no primary to take "
            f"over from; wirings: {wired}",
        )
    if len(sources) > 1:
        raise WiringError(
            "wiring",
            f"DAL {target!r} is the target of several wirings ({', '.join(sources)}); "
            "clear all but one first",
        )
    return sources[0]


def _entry(mode: str, target: str, percent: float | None, traffic: str | None = None,
           read_percent: float | None = None) -> CommentedMap:  # fmt: skip
    entry = CommentedMap()
    entry["mode"] = mode
    entry["target"] = target
    if percent is not None:
        entry["percent"] = _number(percent)
    if traffic is not None:
        entry["traffic"] = traffic
    if read_percent is not None:
        entry["read_percent"] = _number(read_percent)
    entry.fa.set_flow_style()
    return entry


def _number(value: float) -> float | int:
    return int(value) if float(value).is_integer() else value


def parse_op(body: Mapping[str, Any]) -> WiringOp:
    """The operation a request names (``{"op", "source", "target", "percent"}``);
    ValueError names the field and what is allowed."""
    op = body.get("op")

    def field(name: str) -> str:
        value = body.get(name)
        if not isinstance(value, str) or not value:
            raise WiringError(name, f"op {op!r} needs {name!r}: a DAL name")
        return value

    percent = body.get("percent")
    if percent is not None and (isinstance(percent, bool) or not isinstance(percent, int | float)):
        raise WiringError("percent", "percent must be a number between 0 and 100")
    match op:
        case "shadow":
            return Shadow(field("source"), field("target"), percent)
        case "split":
            if percent is None:
                raise WiringError("percent", "op 'split' needs 'percent': the share (0-100) sent to the target")
            return Split(field("source"), field("target"), percent)
        case "promote":
            return Promote(field("target"))
        case "clear":
            return Clear(field("source"))
    raise WiringError("op", f"op {op!r} is not one of: {', '.join(OPS)}")


def describe(op: WiringOp) -> str:
    """One line for a version's default message and the audit log."""
    match op:
        case Shadow(source, target, percent, traffic, read_percent):
            return (f"shadow {source} → {target}" + (f" {percent}%" if percent is not None else "")
                    + (f" ({traffic} only)" if traffic else "")
                    + (f", {read_percent:g}% of reads to {target}" if read_percent else ""))  # fmt: skip
        case Split(source, target, percent):
            return f"split {percent}% of {source} → {target}"
        case Promote(target, _):
            return f"promote {target}"
        case Clear(source):
            return f"clear {source}"
        case Retire(dal):
            return f"retire {dal}"

