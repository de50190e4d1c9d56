"""What a change would do, shown before it is made (``?dry_run=true``). Pure functions.

Two diffs: the shard text (a unified diff of the YAML as written) and the Envoy
resources of the two translations, per resource: added, removed, or changed with a
unified diff of the resource as ``dgw render`` prints it.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from xds_server.config.masking import mask, with_words
from xds_server.resources import PUSH_ORDER, SHORT_NAMES, Resources
from xds_server.translate.render import render_resource


@dataclass(frozen=True)
class ResourceRef:
    type: str  # the short name: clusters, endpoints, listeners, routes, secrets
    name: str


@dataclass(frozen=True)
class ResourceChange:
    type: str
    name: str
    diff: str


@dataclass(frozen=True)
class ResourceDiff:
    added: tuple[ResourceRef, ...]
    removed: tuple[ResourceRef, ...]
    changed: tuple[ResourceChange, ...]

    def to_dict(self) -> dict[str, list[dict[str, str]]]:
        return {
            "added": [{"type": r.type, "name": r.name} for r in self.added],
            "removed": [{"type": r.type, "name": r.name} for r in self.removed],
            "changed": [{"type": c.type, "name": c.name, "diff": c.diff} for c in self.changed],
        }


def config_diff(old: str, new: str, shard: str) -> str:
    """A unified diff of the shard's text (``a/`` the current version, ``b/`` the new)."""
    return "".join(difflib.unified_diff(
        old.splitlines(keepends=True), _ended(new).splitlines(keepends=True),
        fromfile=f"a/{shard}.yaml", tofile=f"b/{shard}.yaml",
    ))  # fmt: skip


def resource_diff(old: Resources, new: Resources, secrets: frozenset[str] = frozenset()) -> ResourceDiff:
    """Per resource type (in push order) and name: what appears, goes, or changes.

    The resources are what Envoy gets, so they hold the values read from the
    environment (``secrets``: both configs'), whole or transformed; each value and each
    of its words is masked in every name and rendered resource *before* the diff is
    made, so no diff line can show one."""
    secrets = with_words(secrets)
    added: list[ResourceRef] = []
    removed: list[ResourceRef] = []
    changed: list[ResourceChange] = []
    for type_url in PUSH_ORDER:
        short = SHORT_NAMES[type_url]
        before, after = old.of(type_url), new.of(type_url)
        for name in sorted(set(after) - set(before)):
            added.append(ResourceRef(short, mask(name, secrets)))
        for name in sorted(set(before) - set(after)):
            removed.append(ResourceRef(short, mask(name, secrets)))
        for name in sorted(set(before) & set(after)):
            if before[name] == after[name]:
                continue
            a = mask(render_resource(before[name]), secrets)
            b = mask(render_resource(after[name]), secrets)
            shown = mask(name, secrets)
            diff = "".join(difflib.unified_diff(
                a.splitlines(keepends=True), b.splitlines(keepends=True),
                fromfile=f"a/{short}/{shown}", tofile=f"b/{short}/{shown}",
            ))  # fmt: skip
            changed.append(ResourceChange(short, shown, diff))
    return ResourceDiff(tuple(added), tuple(removed), tuple(changed))


def _ended(text: str) -> str:
    return text if not text or text.endswith("\n") else text + "\n"
