"""docs/resilience.md's table of the tiers' defaults says what the code does."""

from __future__ import annotations

from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any

from xds_server.config.resilience import LAST_TIER, TIER_DEFAULTS, Policy

DOC = Path(__file__).resolve().parents[2] / "docs" / "resilience.md"
# Policy field names → the YAML key names of the table (durations carry _s in code).
_KEYS = {"timeout_s": "timeout", "per_try_timeout_s": "per_try_timeout", "interval_s": "interval",
         "base_ejection_time_s": "base_ejection_time"}


def _text(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and not value.is_integer():
        return f"{value * 1000:g}ms" if value < 1 else f"{value:g}s"
    return f"{value:g}" if isinstance(value, float) else str(value)


def _flat(obj: Any, prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for f in fields(obj):
        value = getattr(obj, f.name)
        key = prefix + _KEYS.get(f.name, f.name)
        if is_dataclass(value) and key != "load_shedding.rate_limit":
            out.update(_flat(value, f"{key}."))
        elif f.name.endswith("_s"):
            out[key] = f"{value * 1000:g}ms" if value < 1 else f"{value:g}s"
        else:
            out[key] = _text(value)
    return out


def _documented() -> dict[str, list[str]]:
    rows = {}
    for line in DOC.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 6 and cells[0].startswith("`") and cells[0] != "`key`":
            rows[cells[0].strip("`")] = cells[1:5]
    return rows


def test_the_documented_table_is_the_code() -> None:
    documented = _documented()
    in_code: dict[str, list[str]] = {}
    for tier in range(LAST_TIER + 1):
        for key, value in _flat(TIER_DEFAULTS[tier]).items():
            in_code.setdefault(key, []).append(value)
    assert documented == in_code


def test_every_tier_up_to_the_last_has_defaults() -> None:
    assert sorted(TIER_DEFAULTS) == list(range(LAST_TIER + 1))
    assert all(isinstance(p, Policy) for p in TIER_DEFAULTS.values())
