"""Load a configuration file: text → interpolate → YAML → models → semantic checks.

Every failure becomes a ConfigError whose problems name the file, the key path and
what is allowed; nothing here lets a stack trace reach the user.
"""

from __future__ import annotations

import difflib
import os
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from .errors import ConfigError, Problem
from .interpolate import InterpolationError, interpolate
from .model import DeployFile, ShardFile
from .semantics import check_runtime

M = TypeVar("M", bound=BaseModel)

_TYPE_TAGS = {"str", "int", "float", "bool", "none", "dict", "list", "is-instance"}


def parse_text(text: str, file: str, env: Mapping[str, str] | None = None) -> Any:
    """Interpolate and parse YAML (safe loader only); errors name file and line."""
    try:
        expanded = interpolate(text, os.environ if env is None else env)
    except InterpolationError as e:
        raise ConfigError([Problem(file, f"line {e.line}", str(e))]) from None
    try:
        data = yaml.safe_load(expanded)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigError([Problem(file, where, f"not valid YAML: {problem}")]) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError([Problem(file, "", "the document must be a mapping of keys")])
    return data


def validate_model(model: type[M], data: Any, file: str) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_problems(model, e, file)) from None


def load_shard_text(text: str, file: str, env: Mapping[str, str] | None = None) -> ShardFile:
    """A runtime config (optionally with ``deploy_desires``), fully checked."""
    shard = validate_model(ShardFile, parse_text(text, file, env), file)
    problems = check_runtime(shard, file)
    if problems:
        raise ConfigError(problems)
    return shard


def load_served_config(text: str, source: str) -> ShardFile:
    """A config as the xds_server serves it to sidecars: already interpolated, so a
    ``${VAR}`` left in it (from ``$${VAR}``) is for the DAL's shell, not for us."""
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError([Problem(source, "", f"not valid YAML: {e}")]) from None
    shard = validate_model(ShardFile, data, source)
    problems = check_runtime(shard, source)
    if problems:
        raise ConfigError(problems)
    return shard


def load_shard(path: str | Path, env: Mapping[str, str] | None = None) -> ShardFile:
    return load_shard_text(_read(path), str(path), env)


def load_any(path: str | Path, env: Mapping[str, str] | None = None) -> ShardFile | DeployFile:
    """A runtime config or a deploy desires file, told apart by their top-level keys."""
    text, file = _read(path), str(path)
    data = parse_text(text, file, env)
    if set(data) == {"deploy_desires"}:
        return validate_model(DeployFile, data, file)
    return load_shard_text(text, file, env)


def _read(path: str | Path) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError([Problem(str(path), "", f"cannot read: {e.strerror or e}")]) from None
    except UnicodeDecodeError:
        raise ConfigError([Problem(str(path), "", "not UTF-8 text")]) from None


# --- pydantic errors → problems -------------------------------------------------


def _problems(model: type[BaseModel], err: ValidationError, file: str) -> list[Problem]:
    merged: dict[str, list[str]] = {}
    for item in err.errors(include_url=False):
        path, owner = _walk(model, item["loc"])
        if item["type"] == "extra_forbidden":
            allowed = ", ".join(owner.model_fields) if owner else ""
            key = path.rsplit(".", 1)[-1]
            close = difflib.get_close_matches(key, list(owner.model_fields) if owner else [], n=1)
            msg = f"unknown key {key!r}" + (f": did you mean {close[0]!r}?" if close else "") + (
                f" (allowed here: {allowed})" if allowed else ""
            )
        elif item["type"] == "missing":
            msg = "required key is missing"
        else:
            msg = item["msg"].removeprefix("Value error, ")
            if item["type"] in ("literal_error", "enum"):
                msg = f"{item['input']!r} is not allowed: {msg[0].lower()}{msg[1:]}"
        merged.setdefault(path, [])
        if msg not in merged[path]:
            merged[path].append(msg)
    return [Problem(file, path, "; or ".join(msgs)) for path, msgs in merged.items()]


def _walk(model: type[BaseModel], loc: tuple) -> tuple[str, type[BaseModel] | None]:
    """Dotted key path for a pydantic ``loc`` (union tags dropped) and the model that
    owns its last key (to list the allowed keys)."""
    parts: list[str] = []
    current: Any = model
    owner: type[BaseModel] | None = model
    for item in loc:
        key = str(item)
        if isinstance(current, type) and issubclass(current, BaseModel):
            owner = current
            field = current.model_fields.get(key)
            if field is None:
                parts.append(key)
                current = None
                continue
            parts.append(key)
            current = _unwrap(field.annotation)
            continue
        origin = typing.get_origin(current)
        if origin is dict:
            parts.append(key)
            current = _unwrap(typing.get_args(current)[1])
            continue
        if origin is list and isinstance(item, int):
            parts.append(str(item))
            current = _unwrap(typing.get_args(current)[0])
            continue
        if key in _TYPE_TAGS or "[" in key or key.startswith(("function-", "literal")):
            continue  # a union member's tag, not a key
        parts.append(key)
    return ".".join(parts), owner


def _unwrap(annotation: Any) -> Any:
    """The model (or dict/list) inside Optional[...] / Union[...]."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        for a in args:
            if isinstance(a, type) and issubclass(a, BaseModel):
                return a
        for a in args:
            if typing.get_origin(a) in (dict, list):
                return a
        return args[0] if args else annotation
    return annotation
