"""Every change to a shard's config goes through here: store first, then serve.

The config store (``xds_server.store``) is the source of truth; the registry serves
the latest stored version of each shard. A change, from the operators' API or from a
file of the watched directory, is loaded, validated and translated *before* it is
stored, so what is stored is always servable; then it is written with compare-and-set
on the version it was made from, and only then installed. A rejected change stores
nothing and leaves the running config as it was.

Ownership: a shard is owned by the API or by one file (``Version.owner``), never both.
The API refuses to change a file-owned shard (``OwnedByFile``: edit the file); a file
for an API-owned shard is refused as a rejection of that file. A file that disappears
does not remove its shard: it keeps serving, marked ``source_missing``; only an
explicit delete removes a shard.

Changes are made one at a time (one lock): each reads the head, checks, stores and
installs before the next begins, so the registry always serves the store's head.

Version sets (``xds_server.deploy``): a change's artifacts are resolved to pins
before it is stored (an unknown artifact is refused at its key path), and the pins
are recorded with the version. An artifact whose entry a change leaves as it was
keeps its pin (a moved branch moves nothing until a rollout re-resolves it); a
rollback runs the pins of the version it goes back to. ``${DGW_CONFIG_VERSION}``
reads the file's own config version (``deploy.artifacts.config_version``).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from xds_server import metrics
from xds_server.config import (
    ConfigError,
    EnvPolicy,
    LoadedShard,
    Problem,
    ShardFile,
    load_shard_checked,
)
from xds_server.deploy.artifacts import CONFIG_VERSION_VAR, Artifact, Pin, Pins, config_version
from xds_server.deploy.pins import VersionSets, recorded, resolve_config
from xds_server.ops import wiring
from xds_server.ops.diff import ResourceDiff, config_diff, resource_diff
from xds_server.resources import Resources
from xds_server.settings import Limits
from xds_server.shards import Prepared, ShardRegistry
from xds_server.store import (
    API_OWNER,
    ConfigStore,
    Conflict,
    NotFound,
    ShardVersion,
    Source,
    StoreError,
    Version,
    Write,
    content_hash,
    file_owner,
)

log = logging.getLogger("xds_server.changes")

FILE_OWNER_PREFIX = file_owner("")


class OwnedByFile(Exception):
    """The API may not change a shard a file owns."""

    def __init__(self, shard: str, path: str, missing: bool):
        self.shard, self.path = shard, path
        advice = (
            "its file is gone: delete the shard through the API to take it over"
            if missing else "edit the file instead, or remove it and delete the shard"
        )
        super().__init__(f"shard {shard} is owned by file {path}; {advice}")


class NodesConnected(Exception):
    """A delete would take a shard away from connected Envoys."""

    def __init__(self, shard: str, nodes: set[str]):
        self.shard, self.nodes = shard, nodes
        shown = ", ".join(sorted(nodes)[:5]) + (", ..." if len(nodes) > 5 else "")
        super().__init__(f"{len(nodes)} Envoys of shard {shard} are connected ({shown}); "
                         "stop them first, or delete with ?force=true")  # fmt: skip


class BaseRequired(Exception):
    """A change to an existing shard must name the version it was made from."""

    def __init__(self, shard: str, current: int):
        self.shard, self.current = shard, current
        super().__init__(f"shard {shard} exists: name the version you changed (its current "
                         f"version is {current})")  # fmt: skip


class Invalid(Exception):
    """The change is refused before anything is stored; ``problems`` say why."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("; ".join(str(p) for p in problems))


@dataclass(frozen=True)
class BatchItem:
    """One shard of ``put_many``: its text and the version it was made from (0: new).
    ``pins``: what its version set runs (a rollback, a rollout's re-resolution); None
    resolves it as any change does."""

    shard: str
    text: str
    base: int
    pins: Pins | None = None


class BatchRefused(Exception):
    """A batch refused as a whole: why, per refused shard (nothing was stored)."""

    def __init__(self, refused: dict[str, Exception]):
        self.refused = refused
        super().__init__(f"{len(refused)} of the batch's shards refused: {', '.join(sorted(refused))}")


@dataclass(frozen=True)
class Done:
    version: Version
    previous: int | None
    unchanged: bool = False  # the text was the head's: no new version (as kubectl's "unchanged")


@dataclass(frozen=True)
class Preview:
    """What a change would do (``dry_run``); nothing was stored."""

    config_diff: str
    resources: ResourceDiff


Outcome = Done | Preview


@dataclass(frozen=True)
class Request:
    """Who asks and why, for the version's author and message."""

    author: str
    message: str = ""
    dry_run: bool = False


def is_file_owned(meta: Version) -> bool:
    return meta.owner.startswith(FILE_OWNER_PREFIX)


def owner_path(meta: Version) -> str:
    return meta.owner.removeprefix(FILE_OWNER_PREFIX)


class Changes:
    def __init__(
        self,
        store: ConfigStore,
        registry: ShardRegistry,
        policy: EnvPolicy | None = None,
        limits: Limits | None = None,
    ):
        self.store = store
        self.registry = registry
        self.policy = policy or EnvPolicy()
        self.limits = limits or registry.limits
        self.heads: dict[str, Version] = {}  # every live stored shard's head
        self.missing: set[str] = set()  # file-owned shards whose file is gone
        self.version_sets = VersionSets(store)
        # Told the name of every shard whose served config changed (capacity plans).
        self.on_served: list[Callable[[str], None]] = []
        self._lock = asyncio.Lock()

    # --- start ---------------------------------------------------------------------

    async def load(self) -> int:
        """Serve the latest stored version of every shard (at start, before the files);
        returns the store revision it was read at (``follow`` goes on from there)."""
        listing = await self.store.list()
        for entry in listing.shards:
            self.heads[entry.meta.shard] = entry.meta
            label = _label(entry.meta)
            try:
                pins = await self.version_sets.stored(entry.meta.shard, entry.meta.number)
                # A version without recorded pins (stored before they were, or a crash
                # between the two writes) runs what resolves now; what does not is said.
                prepared = await self._prepare(entry.meta.shard, entry.text, label, pins=pins,
                                               lenient=True)  # fmt: skip
            except Invalid as e:
                self.registry.reject(entry.meta.shard, label, ConfigError(e.problems))
                continue
            self.registry.install(prepared)
        log.info("event=store_loaded revision=%d shards=%d", listing.revision, len(listing.shards))
        return listing.revision

    async def follow(self, after_revision: int) -> None:
        """Serve what the store holds as it changes: the changes other replicas make
        (ours come back too, and are skipped as already served). Runs until the store
        closes; a watch that breaks resumes by itself, so none is missed."""
        async for entry in self.store.watch(after_revision):
            async with self._lock:
                await self._apply_stored(entry)

    async def _apply_stored(self, entry: ShardVersion) -> None:
        meta, shard = entry.meta, entry.meta.shard
        current = self.heads.get(shard)
        if current is not None and current.revision >= meta.revision:
            return  # served already (our own write, or a newer change)
        if meta.deleted:
            if current is not None:
                self.registry.remove(shard)
                self.heads.pop(shard, None)
                self.missing.discard(shard)
                log.info("event=shard_deleted shard=%s version=%d author=%s via=store", shard,
                         meta.number, meta.author)  # fmt: skip
            return
        label = _label(meta)
        try:
            # The pins the writing replica recorded (before the version): the same build runs.
            pins = await self.version_sets.stored(shard, meta.number)
            prepared = await self._prepare(shard, entry.text, label, pins=pins, lenient=True)
        except Invalid as e:
            self.heads[shard] = meta
            self.registry.reject(shard, label, ConfigError(e.problems))
            return
        self._serve(meta, prepared)

    def file_owned(self) -> set[str]:
        return {s for s, meta in self.heads.items() if is_file_owned(meta)}

    # --- the operators' API -------------------------------------------------------

    # ``base`` is the version a change was made from: 0 when the shard must not exist
    # yet, None when the caller named none (allowed only for a shard that does not).

    async def put(self, shard: str, text: str, base: int | None, request: Request) -> Outcome:
        """Store ``text`` as the shard's next version."""
        return await self._change(shard, base, request, "api", lambda _: text)

    async def wiring(
        self, shard: str, op: wiring.WiringOp, base: int | None, request: Request
    ) -> Outcome:
        def edit(head: ShardVersion | None) -> str:
            if head is None:
                raise NotFound(f"no shard {shard!r}")
            try:
                return wiring.apply(head.text, op)
            except wiring.WiringError as e:
                raise Invalid([Problem(shard, e.path, str(e))]) from None

        return await self._change(shard, base, request, "api", edit)

    async def rollback(self, shard: str, to: int, base: int | None, request: Request) -> Outcome:
        """Version ``to``'s text, with the pins it ran, as the next version."""
        target = await self.store.version(shard, to)
        if target is None:
            raise NotFound(f"shard {shard!r} has no version {to}; `dgw history {shard}` "
                           f"(GET /v1/shards/{shard}/history) lists them")
        if target.meta.deleted:
            raise NotFound(f"version {to} of shard {shard!r} is its deletion; roll back to one before it")

        def edit(head: ShardVersion | None) -> str:
            if head is None:
                raise NotFound(f"no shard {shard!r}")
            return target.text

        message = request.message or f"rollback to version {to}"
        pins = await self.version_sets.stored(shard, to)
        return await self._change(shard, base, Request(request.author, message, request.dry_run),
                                  "rollback", edit, pins)  # fmt: skip

    async def put_many(
        self, items: Sequence[BatchItem], request: Request, source: Source = "api"
    ) -> list[Outcome]:
        """Several shards' next versions as one change: every item is checked (owner,
        base version) and loaded, validated and translated first; if any is refused,
        ``BatchRefused`` says why per shard and nothing is stored. Otherwise all are
        stored in one transaction and then served."""
        async with self._lock:
            checked: list[tuple[BatchItem, ShardVersion | None, Prepared]] = []
            refused: dict[str, Exception] = {}
            # Every text parsed in one trip to a worker thread, then translated here.
            loaded = await asyncio.to_thread(lambda: [self._load(i.text, API_OWNER) for i in items])
            heads = await asyncio.gather(*(self._head(i.shard, i.base) for i in items),
                                         return_exceptions=True)  # fmt: skip
            index = await self._index_for(loaded, [i.pins for i in items])
            for item, shard_loaded, head in zip(items, loaded, heads, strict=True):
                try:
                    if isinstance(head, BaseException):
                        raise head
                    checked.append((item, head, self._translate(item.shard, shard_loaded, API_OWNER,
                                                                item.text, index, item.pins)))  # fmt: skip
                except (Invalid, OwnedByFile, BaseRequired, Conflict) as e:
                    refused[item.shard] = e
            if refused:
                raise BatchRefused(refused)
            if request.dry_run:
                return [
                    Preview(config_diff(head.text if head else "", item.text, item.shard),
                            self._resource_diff(item.shard, prepared))
                    for item, head, prepared in checked
                ]  # fmt: skip
            changed = [(item, head, prepared) for item, head, prepared in checked
                       if not self._holds(head, item.text, prepared)]  # fmt: skip
            writes = [Write(item.shard, item.text, head.meta.number if head else None, API_OWNER)
                      for item, head, _ in changed]  # fmt: skip
            versions: Sequence[Version] = ()
            if writes:
                for item, head, prepared in changed:
                    await self._record_pins(item.shard, head, prepared)
                with metrics.STORE_WRITE_SECONDS.labels("put_many").time():
                    versions = await self.store.put_many(
                        writes, author=request.author, message=request.message, source=source
                    )
            stored = {item.shard: version for version, (item, _, _) in zip(versions, changed, strict=True)}
            outcomes: list[Outcome] = []
            for item, head, prepared in checked:
                version = stored.get(item.shard)
                if version is None:
                    assert head is not None  # unchanged: there is a head
                    outcomes.append(self._unchanged(head.meta, prepared))
                    continue
                self._serve(version, prepared)
                outcomes.append(Done(version, head.meta.number if head else None))
            return outcomes

    async def delete(self, shard: str, base: int | None, request: Request, force: bool) -> Outcome:
        async with self._lock:
            head = await self._head(shard, base, deleting=True)
            if head is None:
                raise NotFound(f"no shard {shard!r}")
            connected = self.registry.connected_nodes(shard)
            if connected and not force:
                raise NodesConnected(shard, connected)
            if request.dry_run:
                return Preview(config_diff(head.text, "", shard), self._resource_diff(shard, None))
            with metrics.STORE_WRITE_SECONDS.labels("delete").time():
                version = await self.store.delete(shard, base_version=head.meta.number,
                                                  author=request.author, message=request.message)  # fmt: skip
            self.registry.remove(shard)
            self.heads.pop(shard, None)
            self.missing.discard(shard)
            log.info("event=shard_deleted shard=%s version=%d author=%s forced_nodes=%d",
                     shard, version.number, request.author, len(connected))  # fmt: skip
            return Done(version, head.meta.number)

    async def _change(
        self,
        shard: str,
        base: int | None,
        request: Request,
        source: Source,
        edit: Callable[[ShardVersion | None], str],
        pins: Pins | None = None,
    ) -> Outcome:
        async with self._lock:
            head = await self._head(shard, base)
            text = edit(head)
            prepared = await self._prepare(shard, text, API_OWNER, pins=pins)
            old = head.text if head else ""
            if request.dry_run:
                return Preview(config_diff(old, text, shard), self._resource_diff(shard, prepared))
            if head is not None and self._holds(head, text, prepared):
                return self._unchanged(head.meta, prepared)
            await self._record_pins(shard, head, prepared)
            with metrics.STORE_WRITE_SECONDS.labels("put").time():
                version = await self.store.put(
                    shard, text, base_version=head.meta.number if head else None,
                    author=request.author, message=request.message, source=source, owner=API_OWNER,
                )  # fmt: skip
            self._serve(version, prepared)
            return Done(version, head.meta.number if head else None)

    def _resource_diff(self, shard: str, prepared: Prepared | None) -> ResourceDiff:
        """What Envoy's resources would become (``prepared``; None: none at all), with
        the values both configs read from the environment masked."""
        running = self.registry.shards.get(shard)
        secrets = (running.secrets if running else frozenset()) | (prepared.secrets if prepared else frozenset())
        new = prepared.resources if prepared is not None else Resources()
        return resource_diff(self.registry.resources(shard), new, secrets)

    def _unchanged(self, head: Version, prepared: Prepared) -> Done:
        """A change to what the shard already holds: no new version. Served again only
        if what runs differs (the stored text was refused at start, e.g. a variable)."""
        served = self.registry.shards.get(head.shard)
        if served is None or served.config_version != prepared.version:
            self._serve(head, prepared)
        return Done(head, head.number, unchanged=True)

    async def _head(self, shard: str, base: int | None, deleting: bool = False) -> ShardVersion | None:
        """The shard's live head, if the API may change it (``OwnedByFile``; a
        file-owned shard whose file is gone may be deleted) and ``base`` names it
        (``BaseRequired``, ``Conflict`` with the current version)."""
        head = await self.store.get(shard)
        if head is not None and is_file_owned(head.meta):
            missing = shard in self.missing
            if not (deleting and missing):
                raise OwnedByFile(shard, owner_path(head.meta), missing)
        current = head.meta.number if head else 0
        if base is None:
            if head is not None:
                raise BaseRequired(shard, current)
            base = 0
        if base != current:
            meta = head.meta if head else next(iter(await self.store.history(shard, limit=1)), None)
            raise Conflict(shard, base or None, meta)
        return head

    # --- the watched directory ---------------------------------------------------------

    async def from_file(self, shard: str, path: str, text: str) -> None:
        """A file's text became this: store it as a new version if it is new and the
        file may own the shard; record a rejection otherwise."""
        async with self._lock:
            head = await self.store.get(shard)
            if head is not None and not is_file_owned(head.meta):
                self._refuse_file(shard, path, f"shard {shard} is owned by the API (version "
                                  f"{head.meta.number}); the file is ignored: remove it, or delete "
                                  "the shard through the API to let the file own it")  # fmt: skip
                return
            self.missing.discard(shard)
            served = self.registry.shards.get(shard)
            if _holds(head, text) and served is not None:
                self.registry.rejections.pop(shard, None)
                return
            try:
                prepared = await self._prepare(shard, text, path)
            except Invalid as e:
                self.registry.reject(shard, path, ConfigError(e.problems))
                await self._audit_file(shard, path, head, None, str(e))
                return
            if head is not None and _holds(head, text):
                self._serve(head.meta, prepared)  # stored, but not served (e.g. env changed)
                return
            try:
                await self._record_pins(shard, head, prepared)
                with metrics.STORE_WRITE_SECONDS.labels("put").time():
                    version = await self.store.put(
                        shard, text, base_version=head.meta.number if head else None,
                        author=file_owner(path), message=f"file {path} changed", source="file",
                        owner=file_owner(path),
                    )  # fmt: skip
            except Conflict as e:
                # Replicas that each watch a copy of the directory store a file's change
                # once: the first one's version stands for the others.
                now = await self.store.get(shard)
                if now is not None and _holds(now, text):
                    self._serve(now.meta, prepared)
                else:
                    self._refuse_file(shard, path, f"not stored: {e}")
                return
            except StoreError as e:
                self._refuse_file(shard, path, f"not stored: {e}")
                return
            self._serve(version, prepared)
            await self._audit_file(shard, path, head, version, "")

    def file_gone(self, shard: str) -> None:
        """The shard's file went away: the shard keeps serving, its source missing."""
        self.registry.rejections.pop(shard, None)
        meta = self.heads.get(shard)
        if meta is None or not is_file_owned(meta) or shard in self.missing:
            return
        self.missing.add(shard)
        log.warning("event=source_missing shard=%s path=%s version=%d serving=true", shard,
                    owner_path(meta), meta.number)  # fmt: skip

    def _refuse_file(self, shard: str, path: str, message: str) -> None:
        self.registry.reject(shard, path, ConfigError([Problem(path, "", message)]))

    async def _audit_file(self, shard: str, path: str, head: ShardVersion | None,
                          version: Version | None, reason: str) -> None:  # fmt: skip
        try:
            await self.store.append_audit(
                actor=file_owner(path), action="file", shard=shard,
                base_version=head.meta.number if head else None,
                new_version=version.number if version else None,
                accepted=version is not None, reason=reason[:500],
            )  # fmt: skip
        except StoreError as e:
            log.error("event=audit_failed shard=%s error=%s", shard, e)

    # --- shared ------------------------------------------------------------------

    async def _prepare(
        self, shard: str, text: str, label: str, pins: Pins | None = None, lenient: bool = False
    ) -> Prepared:
        """Load, validate, resolve the version set and translate; ``Invalid`` lists
        every problem. ``pins``: the DAL pins to run instead of resolving (a rollback);
        ``lenient``: serve what resolves, and log what does not (loading at start)."""
        loaded = await asyncio.to_thread(self._load, text, label)
        index = await self._index_for([loaded], [pins])
        return self._translate(shard, loaded, label, text, index, pins, lenient)

    def check_text(self, text: str, label: str) -> LoadedShard | ConfigError:
        """A shard text loaded and validated as a change would be (nothing stored)."""
        return self._load(text, label)

    def _load(self, text: str, label: str) -> LoadedShard | ConfigError:
        """Parse and validate (off the loop: a big file must not stall it)."""
        own = config_version(text)
        env = {**os.environ, CONFIG_VERSION_VAR: own}
        try:
            loaded = load_shard_checked(text, label, env, self.policy, self.limits)
        except ConfigError as e:
            return e
        # A version is not a secret: views need not mask it.
        return LoadedShard(loaded.config, loaded.secrets - {own})

    def _translate(
        self, shard: str, loaded: LoadedShard | ConfigError, label: str, text: str,
        index: Mapping[str, Artifact], pins: Pins | None, lenient: bool = False,
    ) -> Prepared:  # fmt: skip
        try:
            if isinstance(loaded, ConfigError):
                raise loaded
            held = recorded(pins) if pins is not None else self._held(shard, loaded.config)
            resolved, problems = resolve_config(loaded.config, text, index, label, held)
            if problems and not lenient:
                raise ConfigError(problems)
            for p in problems:
                log.warning("event=version_set_unresolved shard=%s problem=%r serving=unpinned", shard, str(p))
            return self.registry.prepare(shard, loaded.config, label, loaded.secrets, resolved)
        except ConfigError as e:
            raise Invalid(e.problems) from None

    async def _index_for(
        self, loaded: Sequence[LoadedShard | ConfigError], pins: Sequence[Pins | None]
    ) -> dict[str, Artifact]:
        """The artifact index, read only when some change has artifacts to resolve."""
        for one, given in zip(loaded, pins, strict=True):
            desires = one.config.deploy_desires if isinstance(one, LoadedShard) else None
            dals = {k for k in desires.version_set.artifacts if k.startswith("dals/")} if desires else set()
            if dals and (given is None or dals - set(given)):
                return await self.version_sets.snapshot()
        return {}

    def _held(self, shard: str, config: ShardFile) -> dict[str, Pin]:
        """The served pins a change keeps: those whose version-set entry it leaves alone."""
        served = self.registry.shards.get(shard)
        if served is None or served.config.deploy_desires is None or config.deploy_desires is None:
            return {}
        old = served.config.deploy_desires.version_set.artifacts
        new = config.deploy_desires.version_set.artifacts
        return {k: p for k, p in recorded(served.pins).items() if k in new and old.get(k) == new[k]}

    async def _record_pins(self, shard: str, head: ShardVersion | None, prepared: Prepared) -> None:
        """Record the pins of the version about to be written, before it is."""
        if not recorded(prepared.pins):
            return
        if head is not None:
            number = head.meta.number + 1
        else:
            last = await self.store.history(shard, limit=1)
            number = last[0].number + 1 if last else 1
        await self.version_sets.record(shard, number, prepared.pins)

    def _holds(self, head: ShardVersion | None, text: str, prepared: Prepared) -> bool:
        """Whether the shard's head already is ``text`` with these pins."""
        if not _holds(head, text):
            return False
        served = self.registry.shards.get(prepared.shard)
        return served is None or recorded(served.pins) == recorded(prepared.pins)

    def _serve(self, version: Version, prepared: Prepared) -> None:
        self.heads[version.shard] = version
        self.registry.install(prepared)
        for listener in self.on_served:
            listener(version.shard)
        log.info("event=version_served shard=%s version=%d source=%s author=%s config_version=%s",
                 version.shard, version.number, version.source, version.author,
                 prepared.version)  # fmt: skip


def _holds(head: ShardVersion | None, text: str) -> bool:
    """Whether the shard's head already is ``text``."""
    return head is not None and head.meta.content_hash == content_hash(text)


def _label(meta: Version) -> str:
    """Where a stored shard's config comes from: its file, or ``api``."""
    return owner_path(meta) if is_file_owned(meta) else API_OWNER

