"""What the agent needs from a container runtime, and the errors it may raise.

A runtime runs DAL instances from ``DalSpec``s, labels them so they can be found
again (by a restarted agent too), reports them as ``Observed`` and wakes the agent
when something happens to one of them.
"""

from __future__ import annotations

import abc
from collections.abc import Callable

from xds_server.deploy.artifacts import Pin

from ..plan import Observed
from ..spec import DalSpec

Notify = Callable[[str], None]


class DalRunError(Exception):
    """Acting on a DAL failed for a reason the user can fix; the message says how."""


class RuntimeUnavailable(Exception):
    """The runtime cannot be used on this host (e.g. no Docker engine answers)."""


class Runtime(abc.ABC):
    name: str
    #: The network mode DAL specs are built for (host/bridge for Docker, process).
    network_mode: str

    @abc.abstractmethod
    async def start(self, notify: Notify) -> None:
        """Begin watching instances; ``notify(reason)`` wakes the reconcile loop."""

    @abc.abstractmethod
    async def observe(self) -> list[Observed]:
        """Every instance this agent (shard + node) owns, whatever its state."""

    @abc.abstractmethod
    async def create(self, spec: DalSpec) -> None:
        """Create and start an instance of ``spec``."""

    @abc.abstractmethod
    async def start_instance(self, observed: Observed, spec: DalSpec) -> None:
        """Start an instance that exists but is not running (same spec)."""

    @abc.abstractmethod
    async def restart(self, observed: Observed, spec: DalSpec) -> None:
        """Stop (if running) and start again an instance of the same spec."""

    @abc.abstractmethod
    async def remove(self, observed: Observed) -> None:
        """Stop and remove an instance."""

    @abc.abstractmethod
    async def logs(self, observed: Observed, lines: int) -> list[str]:
        """The last ``lines`` lines the instance wrote (for crash reports)."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Stop watching; instances keep running (a restarted agent adopts them)."""

    async def build_digest(self, pin: Pin, command: tuple[str, ...] | None) -> str:
        """The digest of the build this host would run for ``pin`` (``sidecar.builds``);
        DalRunError when there is none, or this runtime cannot run that kind."""
        raise DalRunError(f"the {self.name} runtime cannot check {pin.kind} builds")
