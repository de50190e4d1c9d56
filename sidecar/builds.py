"""The tamper check: a pinned DAL runs only a build whose digest is its pin's.

The server sends each config with its version set's pins (``ShardConfig.pins``). A
container DAL that has one (``xds_server.deploy.artifacts.pin_for_dal``) is checked
before anything is made from it: the runtime finds the build the way a host gets it
(the Docker runtime: the image by the reference it was pushed from; the process
runtime: the command's files, ``common.digests``) and reports its digest. The same
digest: the DAL runs exactly that (Docker: created from the image ID, so nothing can
be swapped in between). Another digest, or none: the DAL is refused; its running
instance, if any, is left alone and keeps serving, and the report says why
(``refused.dal.NAME``), which ``dgw status`` shows.

``judge`` is pure; ``check_builds`` asks the runtime.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from xds_server.config import RuntimeConfig
from xds_server.deploy.artifacts import Pin, Pins, pin_for_dal

from .runtimes.base import DalRunError, Runtime
from .spec import SpecError, command_of


@dataclass(frozen=True)
class Verified:
    """The build found has the pinned digest: run exactly it."""

    digest: str


@dataclass(frozen=True)
class Refused:
    """The build found is not the pinned one (or there is none): do not run it."""

    message: str


BuildCheck = Verified | Refused


def judge(pin: Pin, found: str) -> BuildCheck:
    if found == pin.digest:
        return Verified(pin.digest)
    what = "image" if pin.kind == "image" else "the command's files"
    return Refused(
        f"{what} {pin.source} {'has' if pin.kind == 'image' else 'have'} digest {found[:19]}, but the "
        f"version set pins {pin.artifact} to {pin.digest[:19]} ({pin.ref}): refused (tampered, or not "
        "the build that was pushed); the running instance, if any, keeps serving"
    )


async def check_builds(runtime: Runtime, cfg: RuntimeConfig, pins: Pins) -> dict[str, BuildCheck]:
    """Every pinned container DAL's check, by DAL name."""
    checks: dict[str, BuildCheck] = {}
    for name, dal in sorted(cfg.container_dals.items()):
        pin = pin_for_dal(pins, name, dal)
        if pin is None:
            continue
        try:
            found = await runtime.build_digest(pin, command_of(dal))
        except (DalRunError, SpecError) as e:
            checks[name] = Refused(f"{pin.artifact} ({pin.ref}, {pin.digest[:19]}): {e}")
            continue
        checks[name] = judge(pin, found)
    return checks


def refusals(checks: Mapping[str, BuildCheck]) -> dict[str, str]:
    return {name: c.message for name, c in checks.items() if isinstance(c, Refused)}
