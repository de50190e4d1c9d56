"""DAL instances as Docker containers, through the (blocking) docker SDK.

Every SDK call runs in a worker thread; the engine's event stream is read by a
daemon thread that wakes the asyncio loop. Images are never pulled: a missing one is
an error the user fixes by building or loading it. Health checks are Docker's own
(the container's ``Healthcheck``); restarting on unhealthy is the agent's job.
"""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import docker
import docker.errors
import requests
from docker.models.containers import Container

from dgw_api.health import Health
from xds_server.deploy.artifacts import Pin

from ..log import EventLog
from ..plan import Observed, State
from ..spec import (
    ENVOY_HOST_NAME,
    LABEL_DAL,
    LABEL_MANAGED_BY,
    LABEL_NODE,
    LABEL_PORTS,
    LABEL_SHARD,
    LABEL_SPEC_HASH,
    MANAGED_BY,
    DalSpec,
    parse_ports_label,
)
from .base import DalRunError, Notify, Runtime, RuntimeUnavailable

_T = TypeVar("_T")
_NS = 1_000_000_000
API_TIMEOUT_S = 120
_NAME_UNSAFE = re.compile(r"[^a-zA-Z0-9_.-]")
_EVENTS_RETRY_S = 1.0
# Every health probe is an exec (create, start, die): its outcome arrives as a
# health_status event when it matters, so these need no reconcile pass.
_QUIET_ACTIONS = ("exec_", "attach", "resize", "top", "export", "commit", "copy", "archive-path")

_STATES = {
    "running": State.RUNNING,
    "paused": State.RUNNING,
    "restarting": State.RUNNING,
    "created": State.CREATED,
}


def connect(probe_timeout_s: float = 3.0, timeout_s: float = API_TIMEOUT_S) -> docker.DockerClient:
    """A client for the local engine, or RuntimeUnavailable saying why not.

    The engine is probed with a short timeout; the client itself gets a long one,
    since creating a container (a copy of the image under vfs) can take seconds."""
    try:
        probe = docker.from_env(timeout=max(int(probe_timeout_s), 1))
        try:
            probe.ping()
        finally:
            probe.close()
        return docker.from_env(timeout=int(timeout_s))
    except docker.errors.DockerException as e:
        raise RuntimeUnavailable(f"no Docker engine answers ({_short(e)})") from None


def owner_filters(shard: str, node: str) -> dict[str, Any]:
    """The label filter that selects exactly this agent's containers."""
    return {
        "label": [
            f"{LABEL_MANAGED_BY}={MANAGED_BY}",
            f"{LABEL_SHARD}={shard}",
            f"{LABEL_NODE}={node}",
        ]
    }


def container_name(shard: str, node: str, dal: str) -> str:
    return _NAME_UNSAFE.sub("_", f"dgw-{shard}-{node}-{dal}")


class DockerRuntime(Runtime):
    name = "docker"

    def __init__(
        self,
        client: docker.DockerClient,
        *,
        shard: str,
        node: str,
        network_mode: str,
        bind_address: str,
        stop_grace_s: float,
        log: EventLog,
        user: str | None = None,
    ):
        self._client = client
        self._user = user  # UID:GID the containers run as (--dal-user); None: the image's
        self._shard = shard
        self._node = node
        self.network_mode = network_mode
        self._bind = bind_address
        self._stop_grace = stop_grace_s
        self._log = log
        self._filters = owner_filters(shard, node)
        self._closed = threading.Event()
        self._stream: Any = None
        self._thread: threading.Thread | None = None

    async def start(self, notify: Notify) -> None:
        loop = asyncio.get_running_loop()

        def wake(reason: str) -> None:
            loop.call_soon_threadsafe(notify, reason)

        self._thread = threading.Thread(
            target=self._pump_events, args=(wake,), name="docker-events", daemon=True
        )
        self._thread.start()

    def _pump_events(self, wake: Notify) -> None:
        while not self._closed.is_set():
            try:
                self._stream = self._client.events(decode=True, filters=self._filters)
                wake("docker events connected")
                for ev in self._stream:
                    action = ev.get("Action", "?")
                    if action.startswith(_QUIET_ACTIONS):
                        continue
                    attrs = ev.get("Actor", {}).get("Attributes", {})
                    wake(f"docker {action} dal={attrs.get(LABEL_DAL, '?')}")
            except Exception as e:
                if self._closed.is_set():
                    return
                self._log.warning("docker_events_lost", error=_short(e), retry_in=_EVENTS_RETRY_S)
            if not self._closed.is_set():
                wake("docker events ended")
                self._closed.wait(_EVENTS_RETRY_S)

    async def close(self) -> None:
        self._closed.set()
        stream = self._stream
        if stream is not None:
            await asyncio.to_thread(_close_quietly, stream)
        await asyncio.to_thread(self._client.close)

    async def observe(self) -> list[Observed]:
        containers = await asyncio.to_thread(
            self._client.containers.list, all=True, filters=self._filters, ignore_removed=True
        )
        return [_observed(c) for c in containers]

    async def _call(self, fn: Callable[..., _T], *args: Any) -> _T:
        """Run a blocking SDK call in a thread; engine trouble becomes a DalRunError."""
        try:
            return await asyncio.to_thread(fn, *args)
        except DalRunError:
            raise
        except (docker.errors.DockerException, requests.exceptions.RequestException) as e:
            raise DalRunError(f"docker engine error: {_short(e)}") from None

    async def create(self, spec: DalSpec) -> None:
        await self._call(self._create_sync, spec)

    def _create_sync(self, spec: DalSpec) -> None:
        name = container_name(spec.shard, spec.node, spec.name)
        self._remove_by_name(name)
        kwargs: dict[str, Any] = {
            "name": name,
            "command": list(spec.command) if spec.command else None,
            "environment": spec.env_dict,
            "labels": spec.labels(),
            "detach": True,
            "restart_policy": {"Name": "no"},  # the agent restarts, with backoff
            "stop_signal": "SIGTERM",
        }
        if self._user is not None:
            kwargs["user"] = self._user
        if spec.healthcheck is not None:
            hc = spec.healthcheck
            kwargs["healthcheck"] = {
                "test": list(hc.test),
                "interval": int(hc.interval_s * _NS),
                "timeout": int(hc.timeout_s * _NS),
                "retries": hc.retries,
                "start_period": int(hc.start_period_s * _NS),
            }
        if spec.network_mode == "host":
            kwargs["network_mode"] = "host"
            kwargs["extra_hosts"] = {ENVOY_HOST_NAME: self._bind}
        else:
            kwargs["ports"] = {
                f"{lst.container_port}/tcp": (self._bind, lst.host_port) for lst in spec.listeners
            }
            kwargs["extra_hosts"] = {ENVOY_HOST_NAME: "host-gateway"}
        if spec.image is None:
            raise DalRunError(f"dal {spec.name} has no image: the docker runtime needs one")
        try:
            container = self._client.containers.create(spec.image, **kwargs)
        except docker.errors.ImageNotFound:
            raise DalRunError(
                f"image {spec.image} not found locally; build or load it (docker images)"
            ) from None
        except docker.errors.APIError as e:
            raise DalRunError(f"cannot create container {name}: {_short(e)}") from None
        self._start_sync(container)

    def _start_sync(self, container: Container) -> None:
        try:
            container.start()
        except docker.errors.APIError as e:
            raise DalRunError(start_error(container.name or str(container.id), e)) from None

    async def start_instance(self, observed: Observed, spec: DalSpec) -> None:
        await self._call(self._restart_sync, observed.ref, False)

    async def restart(self, observed: Observed, spec: DalSpec) -> None:
        await self._call(self._restart_sync, observed.ref, observed.live)

    def _restart_sync(self, ref: str, running: bool) -> None:
        container = self._get(ref)
        if running:
            try:
                container.stop(timeout=int(self._stop_grace))
            except docker.errors.APIError as e:
                raise DalRunError(f"cannot stop container {container.name}: {_short(e)}") from None
        self._start_sync(container)

    async def remove(self, observed: Observed) -> None:
        await self._call(self._remove_sync, observed.ref)

    def _remove_sync(self, ref: str) -> None:
        try:
            container = self._client.containers.get(ref)
            if container.status in ("running", "paused", "restarting"):
                container.stop(timeout=int(self._stop_grace))
            container.remove(force=True, v=True)
        except docker.errors.NotFound:
            return
        except docker.errors.APIError as e:
            raise DalRunError(f"cannot remove container {ref[:12]}: {_short(e)}") from None

    def _remove_by_name(self, name: str) -> None:
        # A container left over under our name (e.g. an interrupted recreate) would
        # make create fail with a name conflict; it is ours if it carries our labels.
        try:
            old = self._client.containers.get(name)
        except docker.errors.NotFound:
            return
        labels = old.labels or {}
        if labels.get(LABEL_MANAGED_BY) != MANAGED_BY:
            raise DalRunError(
                f"a container named {name} exists and is not managed by dgw; remove or "
                "rename it (docker rm)"
            )
        old.remove(force=True, v=True)

    async def logs(self, observed: Observed, lines: int) -> list[str]:
        def tail() -> list[str]:
            try:
                raw = self._get(observed.ref).logs(tail=lines, stdout=True, stderr=True)
            except DalRunError:
                return []
            return raw.decode("utf-8", "replace").splitlines()[-lines:]

        try:
            return await self._call(tail)
        except DalRunError:
            return []

    async def build_digest(self, pin: Pin, command: tuple[str, ...] | None) -> str:
        """The ID of the local image the pin was pushed from (found by its name, as a
        host gets images): what ``builds.judge`` compares with the pin."""
        if pin.kind != "image":
            raise DalRunError(f"it is pinned to {pin.kind} (a process DAL's build); this host runs "
                              "DALs as Docker containers")  # fmt: skip

        def image_id() -> str:
            try:
                return str(self._client.images.get(pin.source).id)
            except docker.errors.ImageNotFound:
                raise DalRunError(f"image {pin.source} is not on this host; build or load it "
                                  "(no registry is pulled from)") from None  # fmt: skip

        return await self._call(image_id)

    def _get(self, ref: str) -> Container:
        try:
            return self._client.containers.get(ref)
        except docker.errors.NotFound:
            raise DalRunError(f"container {ref[:12]} is gone") from None


def _observed(c: Container) -> Observed:
    labels = c.labels or {}
    state = c.attrs.get("State", {})
    health = (state.get("Health") or {}).get("Status")
    return Observed(
        dal=labels.get(LABEL_DAL) or c.name or "",
        ref=c.id or "",
        spec_hash=labels.get(LABEL_SPEC_HASH, ""),
        state=_STATES.get(state.get("Status", ""), State.EXITED),
        health=Health.UNHEALTHY if state.get("Paused") else Health.from_word(health),
        ports=parse_ports_label(labels.get(LABEL_PORTS)),
        exit_code=state.get("ExitCode"),
        started_at=_epoch(state.get("StartedAt")),
        error=_short(Exception(state["Error"])) if state.get("Error") else None,
    )


def _epoch(stamp: str | None) -> float | None:
    """Docker's RFC 3339 (nanoseconds) → epoch seconds; the zero time → None."""
    if not stamp or stamp.startswith("0001-"):
        return None
    main, _, frac = stamp.rstrip("Z").partition(".")
    try:
        base = datetime.strptime(main, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC)
    except ValueError:
        return None
    return base.timestamp() + (float(f"0.{frac[:9]}") if frac.isdigit() else 0.0)


_OCI_NOISE = re.compile(r"^.*unable to start container process: (?P<why>.*?)(?::\s*unknown)?$")


def _short(e: Exception) -> str:
    """The engine's explanation, on one line, without runc's layers of prefixes."""
    explanation = getattr(e, "explanation", None)
    text = explanation if explanation else str(e)
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    text = " ".join(str(text).split())
    m = _OCI_NOISE.match(text)
    return m.group("why") if m else text


def start_error(container: str, e: Exception) -> str:
    why = _short(e)
    hint = "; check container_cmd and the image" if "exec:" in why else ""
    return f"cannot start container {container}: {why}{hint}"


def _close_quietly(stream: Any) -> None:
    try:
        stream.close()
    except Exception:
        pass
