"""The KV DAL's configuration: which namespaces exist, the engine each is stored in, the
optional look-aside cache and every guardrail, with their defaults (this module is
the one place they live).

Given as YAML in ``KV_CONFIG`` (or a file named by ``KV_CONFIG_FILE``), so a shard file
sets it in the DAL's ``env``::

    engines:
      local: {kind: sqlite, path: /var/lib/dgw-kv/kv.sqlite3}
      pg:    {kind: postgres, dsn: "postgresql://postgres@127.0.0.1:5432/postgres", schema: kv}
    cache: {url: "redis://127.0.0.1:6379/0", prefix: "dgw-kv:demo:"}
    namespaces:
      demo:   {engine: local, cache_ttl_s: 30}
      orders: {engine: pg}
    limits: {max_items_per_call: 500}

Only the engines a namespace uses are opened.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

KIB = 1024
MIB = 1024 * KIB


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class SqliteConfig(_Strict):
    kind: Literal["sqlite"]
    path: Path
    synchronous: Literal["FULL", "NORMAL"] = "FULL"
    """FULL: a returned write is fsynced. NORMAL: survives a crash of the DAL, not of the host."""


class PostgresConfig(_Strict):
    kind: Literal["postgres"]
    dsn: str = "postgresql://postgres@127.0.0.1:5432/postgres"
    schema_name: str = Field("kv", alias="schema", pattern=r"^[a-z_][a-z0-9_]{0,62}$")
    """The schema the DAL creates and upgrades; one per DAL that must not share tables."""
    pool_size: int = Field(4, ge=1, le=100)


EngineConfig = Annotated[SqliteConfig | PostgresConfig, Field(discriminator="kind")]


class CacheConfig(_Strict):
    """A Redis look-aside cache for GetItems. A dead cache costs no call: reads and
    writes go on with the engine, the cache is tried again after ``retry_s``."""

    url: str = "redis://127.0.0.1:6379/0"
    prefix: str = "dgw-kv:"
    """Every key the DAL writes starts with it: DALs sharing one Redis need their own."""
    timeout_ms: float = Field(50.0, gt=0)
    """Per Redis command; past it the cache counts as down."""
    retry_s: float = Field(1.0, gt=0)
    max_entry_bytes: int = Field(256 * KIB, gt=0)
    """Pages larger than this are not cached."""


class NamespaceConfig(_Strict):
    engine: str
    cache_ttl_s: float = Field(0.0, ge=0)
    """How long a cached page may be served; 0: this namespace is not cached."""


class Limits(_Strict):
    """The guardrails. A call over one is refused with the limit's name and value."""

    max_key_bytes: int = Field(1 * KIB, gt=0)
    max_id_bytes: int = Field(1 * KIB, gt=0)
    max_value_bytes: int = Field(1 * MIB, gt=0)
    """The largest value written in one item, and the size of each chunk of a larger one."""
    max_item_bytes: int = Field(64 * MIB, gt=0)
    """The largest value at all (written in chunks)."""
    max_items_per_call: int = Field(1000, gt=0)
    """Items of a put, keys of a predicate, mutations of a mutate."""
    max_request_bytes: int = Field(4 * MIB, gt=0)
    default_page_bytes: int = Field(1 * MIB, gt=0)
    max_page_bytes: int = Field(2 * MIB, gt=0)
    min_page_bytes: int = Field(4 * KIB, gt=0)
    token_max_age_s: float = Field(24 * 3600.0, gt=0)
    """Tokens older than this are refused, and tombstones older than it are purged."""
    token_max_ahead_s: float = Field(60.0, ge=0)
    staged_chunks_ttl_s: float = Field(3600.0, gt=0)
    """Chunks staged and never committed are purged after this long."""
    deadline_margin_ms: float = Field(50.0, ge=0)
    """A page stops early when less than this is left before the call's deadline."""

    @model_validator(mode="after")
    def _pages(self) -> Limits:
        if not self.min_page_bytes <= self.default_page_bytes <= self.max_page_bytes:
            raise ValueError("min_page_bytes <= default_page_bytes <= max_page_bytes must hold")
        if self.min_page_bytes <= self.max_key_bytes + 64:
            raise ValueError("min_page_bytes must exceed max_key_bytes + 64: a page must hold a key and some value")
        if self.max_value_bytes > self.max_request_bytes // 2:
            raise ValueError("max_value_bytes must be at most half of max_request_bytes")
        return self


class KvConfig(_Strict):
    engines: dict[str, EngineConfig]
    namespaces: dict[str, NamespaceConfig]
    cache: CacheConfig | None = None
    limits: Limits = Field(default_factory=lambda: Limits.model_validate({}))
    purge_interval_s: float = Field(600.0, gt=0)
    """How often old tombstones and abandoned chunks are purged."""

    @model_validator(mode="after")
    def _references(self) -> KvConfig:
        for name, ns in self.namespaces.items():
            if ns.engine not in self.engines:
                known = ", ".join(sorted(self.engines)) or "none"
                raise ValueError(f"namespace {name!r}: engine {ns.engine!r} is not declared (engines: {known})")
            if ns.cache_ttl_s and self.cache is None:
                raise ValueError(f"namespace {name!r}: cache_ttl_s needs a cache (add cache: {{url: ...}})")
        return self

    def used_engines(self) -> dict[str, EngineConfig]:
        used = {ns.engine for ns in self.namespaces.values()}
        return {name: cfg for name, cfg in self.engines.items() if name in used}


class ConfigError(Exception):
    """The configuration is missing or wrong; the message names where and what."""


def parse(text: str, source: str) -> KvConfig:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: must be a mapping with engines and namespaces")
    try:
        return KvConfig.model_validate(data)
    except ValidationError as e:
        lines = []
        for err in e.errors():
            where = ".".join(str(p) for p in err["loc"]) or "(top)"
            lines.append(f"{source}: {where}: {err['msg']}")
        raise ConfigError("\n".join(lines)) from None


def from_env(env: dict[str, str]) -> KvConfig:
    if env.get("KV_CONFIG"):
        return parse(env["KV_CONFIG"], "KV_CONFIG")
    if env.get("KV_CONFIG_FILE"):
        path = Path(env["KV_CONFIG_FILE"])
        try:
            text = path.read_text()
        except OSError as e:
            raise ConfigError(f"KV_CONFIG_FILE {path}: {e.strerror}") from None
        return parse(text, str(path))
    raise ConfigError("no configuration: set KV_CONFIG (YAML: engines, namespaces) or KV_CONFIG_FILE")
