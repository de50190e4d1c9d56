"""The verify: compare source and target without copying (WIP: signatures)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .state import MigrationState


@dataclass(frozen=True)
class VerifyOptions:
    namespaces: Sequence[str] | None = None
    fix: bool = False
    parts: int = 256
    entries_limit: int = 4096
    recheck_s: float = 1.0


@dataclass
class VerifyReport:
    namespaces: dict[str, Any] = field(default_factory=dict)
    differences: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"namespaces": self.namespaces, "differences": self.differences}


async def run_verify(
    source: str,
    target: str,
    state: MigrationState | None = None,
    options: VerifyOptions = VerifyOptions(),
    *,
    progress: bool | None = None,
) -> VerifyReport:
    raise NotImplementedError
