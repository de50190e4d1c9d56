"""The artifact index, and a shard's version set resolved through it to ``Pin``s.

An **artifact** is a named, versioned piece of software a shard runs: ``dals/NAME`` is
a DAL image (the container DALs whose ``image`` is NAME, with any tag, run it; a DAL
without an image is matched by its own name) and ``configs/NAME`` is the runtime
config itself (the seed: "Runtime configuration is a container as well!").

The index keeps, per artifact, the **builds** pushed to it (``dgw artifact push``: a
locally built image's ID, or the SHA-256 of a process DAL's files; no registry is
involved) and the **refs** that name them (``branch/main``, ``tag/v1``,
``version/1.2.3``), each ref moved to the build last pushed under it. It lives in the
config store as one record per artifact (kind ``artifact``, ``deploy.index``), so
every replica reads the same index and it survives restarts.

``resolve`` turns a ``version_set`` into immutable references: a branch, tag or
version becomes the digest its ref names *now*, a sha the build it names. The server
resolves when a shard version is stored and keeps the result with that version
(``xds_server.deploy.pins``): a later push to ``main`` changes nothing that runs until
a rollout re-resolves. The runtime config's own artifact (``configs/*``) resolves to
its **config version**, ``config_version(text)``: the SHA-256 of the shard file as
written, which is also what ``${DGW_CONFIG_VERSION}`` reads in it.

Everything here is pure (the sidecar uses it too); ``index`` keeps the index in the store.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from xds_server.config import Problem
from xds_server.config.model import ContainerDal, VersionSet

RECORD_KIND = "artifact"
KINDS = ("dals", "configs")
_KEY = re.compile(r"^(dals|configs)/([A-Za-z0-9][A-Za-z0-9_.-]{0,62})$")
_REF_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_./+-]{0,127}$")
DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
REF_KINDS = ("branch", "tag", "version")
# Builds kept per artifact (the oldest go first; a ref never names a dropped build:
# refs are re-pointed at every push, and a dropped build's refs have moved on).
MAX_BUILDS = 100
# ``sha: abc123...``: at least this many hex digits of a digest, as git's short hashes.
MIN_SHA_PREFIX = 7
CONFIG_VERSION_CHARS = 12
# The variable a shard file reads its own config version from.
CONFIG_VERSION_VAR = "DGW_CONFIG_VERSION"

PinKind = Literal["image", "files", "config"]
BuildKind = Literal["image", "files"]


class ArtifactError(ValueError):
    """A push or a name the index cannot take; the message says what is allowed."""


def config_version(text: str) -> str:
    """The config artifact's version: the shard file's SHA-256 (as written: the hash the
    config store records with the version), shortened."""
    return hashlib.sha256(text.encode()).hexdigest()[:CONFIG_VERSION_CHARS]


def check_key(key: str) -> tuple[str, str]:
    """``dals/dgw-kv`` → ("dals", "dgw-kv"); ArtifactError for anything else."""
    m = _KEY.fullmatch(key)
    if not m:
        raise ArtifactError(f"{key[:80]!r} is not an artifact name: write dals/IMAGE (a DAL's image) "
                            "or configs/NAME (the runtime config)")  # fmt: skip
    return m.group(1), m.group(2)


def check_ref(ref: str) -> str:
    """``branch/main``, ``tag/v1``, ``version/1.2.3``."""
    kind, _, name = ref.partition("/")
    if kind not in REF_KINDS or not _REF_NAME.fullmatch(name):
        raise ArtifactError(f"{ref[:80]!r} is not a ref: write branch/NAME, tag/NAME or version/NAME")
    return ref


def record_name(key: str) -> str:
    """Records are named by plain words: ``dals/dgw-kv`` → ``dals:dgw-kv``."""
    check_key(key)
    return key.replace("/", ":", 1)


def image_repository(image: str) -> str:
    """The name an image is matched to ``dals/NAME`` by: its last path component,
    without tag or digest (``registry:5000/team/dgw-kv:1`` → ``dgw-kv``)."""
    name = image.split("@", 1)[0].rsplit("/", 1)[-1]
    return name.split(":", 1)[0]


@dataclass(frozen=True)
class Build:
    """One pushed build: what it is, where it came from, who pushed it and when."""

    digest: str  # sha256:<64 hex>: the image ID, or the files' digest
    kind: BuildKind
    source: str  # the image reference it was pushed from, or the files
    pushed_at: str  # ISO 8601, UTC
    pushed_by: str
    refs: tuple[str, ...] = ()  # the refs it was pushed under

    def to_json(self) -> dict[str, Any]:
        return {"digest": self.digest, "kind": self.kind, "source": self.source,
                "pushed_at": self.pushed_at, "pushed_by": self.pushed_by, "refs": list(self.refs)}  # fmt: skip

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Build:
        return cls(str(data["digest"]), _build_kind(data["kind"]), str(data["source"]),
                   str(data["pushed_at"]), str(data["pushed_by"]), tuple(map(str, data.get("refs", ()))))  # fmt: skip


def _build_kind(value: object) -> BuildKind:
    if value == "image":
        return "image"
    if value == "files":
        return "files"
    raise ArtifactError(f"a build's kind is image or files, not {value!r}")


@dataclass(frozen=True)
class Artifact:
    key: str
    builds: tuple[Build, ...] = ()  # oldest first
    refs: Mapping[str, str] = field(default_factory=dict)  # ref → digest

    def to_json(self) -> dict[str, Any]:
        return {"artifact": self.key, "builds": [b.to_json() for b in self.builds],
                "refs": dict(sorted(self.refs.items()))}  # fmt: skip

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Artifact:
        return cls(str(data["artifact"]), tuple(Build.from_json(b) for b in data.get("builds", ())),
                   {str(k): str(v) for k, v in data.get("refs", {}).items()})  # fmt: skip

    def build(self, digest: str) -> Build | None:
        return next((b for b in reversed(self.builds) if b.digest == digest), None)

    def by_prefix(self, sha: str) -> list[Build]:
        """Builds whose digest starts with ``sha`` (with or without ``sha256:``)."""
        hexa = sha.removeprefix("sha256:")
        seen: dict[str, Build] = {}
        for b in self.builds:
            if b.digest.removeprefix("sha256:").startswith(hexa):
                seen[b.digest] = b
        return list(seen.values())


def push(current: Artifact | None, key: str, build: Build) -> Artifact:
    """``current`` with ``build`` added and every ref it names moved to it (pure)."""
    check_key(key)
    if not DIGEST.fullmatch(build.digest):
        raise ArtifactError(f"digest {build.digest[:80]!r} must be sha256:<64 hex digits>")
    for ref in build.refs:
        check_ref(ref)
    old = current or Artifact(key)
    builds = [b for b in old.builds if b.digest != build.digest]
    previous = old.build(build.digest)
    merged = build if previous is None else Build(
        build.digest, build.kind, build.source, build.pushed_at, build.pushed_by,
        tuple(dict.fromkeys(previous.refs + build.refs)),
    )  # fmt: skip
    builds.append(merged)
    refs = dict(old.refs)
    refs.update({ref: build.digest for ref in build.refs})
    kept = builds[-MAX_BUILDS:]
    alive = {b.digest for b in kept}
    return Artifact(key, tuple(kept), {r: d for r, d in refs.items() if d in alive})


def decode(data: str) -> Artifact:
    return Artifact.from_json(json.loads(data))


def encode(artifact: Artifact) -> str:
    return json.dumps(artifact.to_json(), sort_keys=True, separators=(",", ":"))


# --- pins --------------------------------------------------------------------------


@dataclass(frozen=True)
class Pin:
    """An artifact resolved to an immutable reference: what a node must run."""

    artifact: str  # dals/dgw-kv, configs/main
    kind: PinKind
    digest: str  # sha256:… (config: the config version)
    source: str  # where a host finds it: the image reference, or the files
    ref: str  # what the version set named, e.g. "branch main", "sha 3f2a…"

    def to_json(self) -> dict[str, str]:
        return {"artifact": self.artifact, "kind": self.kind, "digest": self.digest,
                "source": self.source, "ref": self.ref}  # fmt: skip

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Pin:
        kind = str(data["kind"])
        if kind not in ("image", "files", "config"):
            raise ValueError(f"a pin's kind is image, files or config, not {kind!r}")
        return cls(str(data["artifact"]), kind, str(data["digest"]), str(data["source"]),  # type: ignore[arg-type]
                   str(data.get("ref", "")))  # fmt: skip


Pins = Mapping[str, Pin]  # artifact → pin


def pins_json(pins: Pins) -> list[dict[str, str]]:
    return [pins[k].to_json() for k in sorted(pins)]


def pins_from_json(data: Iterable[Mapping[str, Any]]) -> dict[str, Pin]:
    pins = [Pin.from_json(p) for p in data]
    return {p.artifact: p for p in pins}


def _where(key: str, part: str = "") -> str:
    return f"deploy_desires.version_set.artifacts.{key}" + (f".{part}" if part else "")


def resolve(
    version_set: VersionSet, index: Mapping[str, Artifact], file_version: str, file: str,
    held: Pins | None = None,
) -> tuple[dict[str, Pin], list[Problem]]:
    """Every artifact of ``version_set`` as a pin, or a problem at its key path (an
    unknown artifact, ref or sha). ``index`` maps artifact keys to their entries;
    ``file_version`` is the shard file's config version (``config_version``); an
    artifact in ``held`` keeps that pin instead of being resolved again."""
    pins: dict[str, Pin] = {}
    problems: list[Problem] = []
    held = held or {}
    for key, wanted in sorted(version_set.artifacts.items()):
        try:
            kind, _ = check_key(key)
        except ArtifactError as e:
            problems.append(Problem(file, _where(key), str(e)))
            continue
        if key in held and kind == "dals":
            pins[key] = held[key]
            continue
        named = f"{wanted.kind} {wanted.value}" if wanted.value else f"sha {wanted.sha}"
        if kind == "configs":
            pin, why = _config_pin(key, wanted.kind, wanted.value, wanted.sha, file_version)
        else:
            pin, why = _dal_pin(key, index.get(key), wanted.kind, wanted.value, wanted.sha, named,
                                sorted(k for k in index if k.startswith("dals/")))  # fmt: skip
        if pin is None:
            problems.append(Problem(file, _where(key, why[0]), why[1]))
        else:
            pins[key] = pin
    return pins, problems


def _config_pin(key: str, kind: str, value: str | None, sha: str | None,
                file_version: str) -> tuple[Pin | None, tuple[str, str]]:  # fmt: skip
    given = sha if sha is not None else (value if kind == "sha" else None)
    if given is not None and given != file_version:
        return None, ("sha" if sha is not None else "value", (
            f"{given[:80]!r} is not this file's config version ({file_version}): the runtime config "
            f"in this file is the {key} artifact; write ${{{CONFIG_VERSION_VAR}}} or leave the sha out"
        ))
    ref = f"{kind} {value}" if value and kind != "sha" else f"sha {file_version}"
    return Pin(key, "config", file_version, "this shard file", ref), ("", "")


def _dal_pin(key: str, artifact: Artifact | None, kind: str, value: str | None, sha: str | None,
             named: str, known: list[str]) -> tuple[Pin | None, tuple[str, str]]:  # fmt: skip
    if artifact is None:
        listed = ", ".join(known[:10]) or "none"
        return None, ("", f"no artifact {key} in the artifact index (artifacts: {listed}); push a "
                          f"build first: dgw artifact push {key} --image IMAGE (or --files)")  # fmt: skip
    digest_text = sha if sha is not None else (value if kind == "sha" else None)
    if digest_text is not None:
        part = "sha" if sha is not None else "value"
        found = artifact.by_prefix(digest_text) if len(digest_text.removeprefix("sha256:")) >= MIN_SHA_PREFIX else []
        if len(found) != 1:
            why = "names several builds: give more of it" if found else "is no build of it"
            latest = ", ".join(b.digest[:19] for b in reversed(artifact.builds[-3:])) or "none"
            return None, (part, f"sha {digest_text[:80]!r} {why} (latest builds of {key}: {latest})")
        one = found[0]
        if kind != "sha" and value and f"{kind}/{value}" not in one.refs:
            return None, (part, f"build {one.digest[:19]} of {key} was never pushed to {kind} {value!r} "
                                f"(it was pushed to: {', '.join(one.refs) or 'no ref'})")  # fmt: skip
        return Pin(key, one.kind, one.digest, one.source, named), ("", "")
    digest = artifact.refs.get(f"{kind}/{value}")
    build = artifact.build(digest) if digest else None
    if build is None:
        same = sorted(r.partition("/")[2] for r in artifact.refs if r.startswith(f"{kind}/"))
        return None, ("value", f"{key} has no {kind} {value!r} ({_plural(kind)}: {', '.join(same[:10]) or 'none'}); "
                               f"dgw artifact push {key} ... --{kind} {value} makes it")  # fmt: skip
    return Pin(key, build.kind, build.digest, build.source, named), ("", "")


def _plural(kind: str) -> str:
    return {"branch": "branches", "tag": "tags", "version": "versions"}.get(kind, kind)


def pin_for_dal(pins: Pins, name: str, dal: ContainerDal) -> Pin | None:
    """The pin a container DAL runs: ``dals/<its image's repository>``, or
    ``dals/<its name>`` for a DAL without an image."""
    key = f"dals/{image_repository(dal.image)}" if dal.image else f"dals/{name}"
    pin = pins.get(key)
    return pin if pin is not None and pin.kind != "config" else None
