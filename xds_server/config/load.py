"""Load a configuration file: text → interpolate → YAML → models → semantic checks.

Every failure becomes a ConfigError whose problems name the file, the key path and
what is allowed; nothing here lets a stack trace reach the user. Every input is
bounded first (``Limits``: file size, nesting, alias expansion), and every check runs
exactly once: a ShardFile returned from here is fully checked, and the translator
relies on that instead of checking again.
"""

from __future__ import annotations

import difflib
import fnmatch
import os
import stat
import types
import typing
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from xds_server.settings import DEFAULT_ALLOWED_ENV, RESERVED_ENV, Limits

from .errors import ConfigError, Problem, quote
from .interpolate import InterpolationError, interpolate_values
from .masking import masking
from .model import DeployFile, ShardFile
from .secrets import shown_problems
from .semantics import check_runtime
from .yaml_shape import SafeLoader, ShapeError, check_shape

M = TypeVar("M", bound=BaseModel)

_TYPE_TAGS = {"str", "int", "float", "bool", "none", "dict", "list", "is-instance"}


_DEFAULT_LIMITS = Limits()


@dataclass(frozen=True)
class EnvPolicy:
    """Which variables ``${VAR}`` may read: those matching one of ``allowed`` (names
    or shell-style patterns; ``ServerSettings.allowed_env``), never a reserved one."""

    allowed: Collection[str] = DEFAULT_ALLOWED_ENV
    reserved: frozenset[str] = RESERVED_ENV

    def allows(self, name: str) -> bool:
        return name not in self.reserved and any(fnmatch.fnmatchcase(name, p) for p in self.allowed)


@dataclass(frozen=True)
class LoadedShard:
    """A checked shard file and the values interpolation took from the environment:
    whoever shows the config to people masks them (``secrets.mask_data``)."""

    config: ShardFile
    secrets: frozenset[str]


def parse_text(
    text: str,
    file: str,
    env: Mapping[str, str] | None = None,
    policy: EnvPolicy = EnvPolicy(),
    limits: Limits = _DEFAULT_LIMITS,
) -> Any:
    """Interpolate and parse YAML (safe loader only); errors name file and line."""
    return _parse(text, file, env, policy, limits)[0]


def _parse(
    text: str, file: str, env: Mapping[str, str] | None, policy: EnvPolicy, limits: Limits
) -> tuple[dict[str, Any], frozenset[str]]:
    if len(text) > limits.shard_file_bytes:
        raise ConfigError([_too_big(file, len(text), limits)])
    try:
        expanded, secrets = interpolate_values(
            text, os.environ if env is None else env, policy.allows
        )
    except InterpolationError as e:
        raise ConfigError([Problem(file, f"line {e.line}", str(e))]) from None
    if len(expanded) > 2 * limits.shard_file_bytes:
        raise ConfigError([Problem(file, "", "interpolated variables make the file too big")])
    with masking(secrets):  # a YAML error may quote the (interpolated) text
        try:
            check_shape(expanded, limits.yaml_depth, limits.yaml_nodes)
            data = yaml.load(expanded, Loader=SafeLoader)
        except ShapeError as e:
            raise ConfigError([Problem(file, f"line {e.line}", str(e))]) from None
        except yaml.YAMLError as e:
            line, problem = yaml_fault(e, expanded)
            raise ConfigError([Problem(file, f"line {line}" if line else "", f"not valid YAML: {problem}")]) from None
    if data is None:
        # An empty (or truncated-to-nothing) file is a mistake, never "no listeners".
        raise ConfigError([Problem(file, "", "the file is empty; a shard file needs at least "
                                   "proxy_config and its DALs")])
    if not isinstance(data, dict):
        raise ConfigError([Problem(file, "", "the document must be a mapping of keys")])
    return data, secrets


def yaml_fault(error: yaml.YAMLError, text: str) -> tuple[int | None, str]:
    """The line a YAML error is the fault of (1-based), and what is wrong there.

    The parser notices some faults only at the next token: an unclosed ``{`` or ``[``
    where the next key begins, a key without its ``:`` (``image x``) on the next line,
    whose ``:`` then seems out of place. Those are put back on the line of the fault."""
    mark = getattr(error, "problem_mark", None)
    problem = str(getattr(error, "problem", None) or error)
    if mark is None:
        return None, problem
    line = mark.line + 1
    context, opened = getattr(error, "context", None) or "", getattr(error, "context_mark", None)
    if context.startswith("while parsing a flow") and opened is not None and opened.line < mark.line:
        bracket = "{" if "mapping" in context else "["
        return opened.line + 1, f"the {bracket!r} opened on this line is not closed ({problem}, line {line})"
    if problem.startswith("mapping values are not allowed"):
        lines = text.splitlines()
        before = next((i for i in range(mark.line - 1, -1, -1)
                       if lines[i].strip() and not lines[i].lstrip().startswith("#")), None)  # fmt: skip
        head = lines[mark.line][: mark.column] if mark.line < len(lines) else ""
        if before is not None and ":" not in head and ":" not in lines[before] and not lines[before].lstrip().startswith("-"):
            return before + 1, (f"{quote(lines[before].strip())} needs a ':' after its key (so the ':' on "
                                f"line {line} is not allowed where it is)")  # fmt: skip
    return line, problem


def validate_model(model: type[M], data: Any, file: str) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_problems(model, e, file)) from None


def load_shard_text(text: str, file: str, env: Mapping[str, str] | None = None) -> ShardFile:
    """A runtime config (optionally with ``deploy_desires``), fully checked."""
    return load_shard_checked(text, file, env).config


def load_shard_checked(
    text: str,
    file: str,
    env: Mapping[str, str] | None = None,
    policy: EnvPolicy = EnvPolicy(),
    limits: Limits = _DEFAULT_LIMITS,
) -> LoadedShard:
    """``load_shard_text`` with the server's policy and limits, keeping the secrets.
    Problems never show a secret: each value read from the environment is ``***``."""
    data, secrets = _parse(text, file, env, policy, limits)
    try:
        with masking(secrets):  # every message is masked before it is cut
            shard = validate_model(ShardFile, data, file)
            problems = check_runtime(shard, file)
        if problems:
            raise ConfigError(problems)
    except ConfigError as e:
        raise ConfigError(shown_problems(e.problems, secrets, limits)) from None
    return LoadedShard(shard, secrets)


def load_shard_file(
    path: Path, policy: EnvPolicy = EnvPolicy(), limits: Limits = _DEFAULT_LIMITS
) -> LoadedShard:
    return load_shard_checked(_read(path, limits), str(path), None, policy, limits)


def read_shard_text(path: str | Path, limits: Limits = _DEFAULT_LIMITS) -> str:
    """A shard file's text as written, its size checked before anything is read."""
    return _read(path, limits)


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
    return load_shard_text(_read(path, _DEFAULT_LIMITS), str(path), env)


def load_any(path: str | Path, env: Mapping[str, str] | None = None) -> ShardFile | DeployFile:
    """A runtime config or a deploy desires file, told apart by their top-level keys."""
    text, file = _read(path, _DEFAULT_LIMITS), str(path)
    data = parse_text(text, file, env)
    if set(data) == {"deploy_desires"}:
        return validate_model(DeployFile, data, file)
    return load_shard_text(text, file, env)


def _too_big(file: str, size: int, limits: Limits) -> Problem:
    return Problem(file, "", f"{size} bytes is more than the {limits.shard_file_bytes} a shard "
                   "file may have (Limits.shard_file_bytes)")


def _read(path: str | Path, limits: Limits) -> str:
    """The file's text; its size is checked before anything is read."""
    try:
        with open(path, "rb") as f:
            info = os.fstat(f.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise ConfigError([Problem(str(path), "", "not a regular file")])
            if info.st_size > limits.shard_file_bytes:
                raise ConfigError([_too_big(str(path), info.st_size, limits)])
            data = f.read(limits.shard_file_bytes + 1)
    except OSError as e:
        raise ConfigError([Problem(str(path), "", f"cannot read: {e.strerror or e}")]) from None
    if len(data) > limits.shard_file_bytes:  # grew between fstat and read
        raise ConfigError([_too_big(str(path), len(data), limits)])
    try:
        return data.decode("utf-8")
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
            msg = f"unknown key {quote(key)}" + (f": did you mean {close[0]!r}?" if close else "") + (
                f" (allowed here: {allowed})" if allowed else ""
            )
        elif item["type"] == "missing":
            msg = "required key is missing"
        else:
            msg = _said(item)
        merged.setdefault(path, [])
        if msg not in merged[path]:
            merged[path].append(msg)
    return [Problem(file, path, "; or ".join(msgs)) for path, msgs in merged.items()]


# pydantic's error types → what was wrong with the value written, in plain words.
_PLAIN = {
    "int_parsing": "is not a whole number",
    "int_type": "is not a whole number",
    "int_from_float": "is not a whole number",
    "float_parsing": "is not a number",
    "float_type": "is not a number",
    "bool_parsing": "is not true or false",
    "bool_type": "is not true or false",
    "string_type": "is not a string (quote it)",
    "list_type": "is not a list",
    "dict_type": "is not a mapping of keys",
    "model_type": "is not a mapping of keys",
}
_BOUNDS = {
    "less_than_equal": ("le", "is more than {}, the most allowed"),
    "less_than": ("lt", "is not less than {}"),
    "greater_than_equal": ("ge", "is less than {}, the least allowed"),
    "greater_than": ("gt", "is not more than {}"),
    "too_long": ("max_length", "is too long: at most {} allowed"),
    "too_short": ("min_length", "is too short: at least {} needed"),
    "string_too_long": ("max_length", "is too long: at most {} characters"),
    "string_too_short": ("min_length", "is too short: at least {} characters"),
}


def _said(item: Any) -> str:
    """One pydantic error as a message that quotes the value written."""
    value = item.get("input")
    kind, written = item["type"], repr(value) if value in ([], {}) else quote(value)
    ctx = item.get("ctx") or {}
    if kind in _PLAIN:
        return f"{written} {_PLAIN[kind]}"
    if kind in _BOUNDS and _BOUNDS[kind][0] in ctx:
        key, words = _BOUNDS[kind]
        bound = ctx[key]
        return f"{written} {words.format(int(bound) if isinstance(bound, float) and bound.is_integer() else bound)}"
    msg = str(item["msg"]).removeprefix("Value error, ")
    if kind in ("literal_error", "enum"):
        return f"{written} is not allowed: {msg[0].lower()}{msg[1:]}"
    if kind.startswith("value_error") or written in msg:
        return msg  # our own validators' messages already quote the value
    return f"{written}: {msg[0].lower()}{msg[1:]}"


def _walk(model: type[BaseModel], loc: tuple[int | str, ...]) -> tuple[str, type[BaseModel] | None]:
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
