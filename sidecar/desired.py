"""The goal state of this host: DAL specs built from the shard config and the host
ports they get, plus what cannot be built now and why.

Pure given its inputs: whether a port is bound by someone else (``in_use``) and the
ports other agents of this process hold (``claimed``) are passed in, so a test
decides them.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field

from xds_server.config import RuntimeConfig

from .builds import BuildCheck, Refused
from .plan import Observed
from .ports import assign_ports
from .spec import DalSpec, SpecError, build_spec


@dataclass(frozen=True)
class Desired:
    specs: dict[str, DalSpec] = field(default_factory=dict)
    blocked: frozenset[str] = frozenset()  # in the config, cannot be built now
    errors: dict[str, str] = field(default_factory=dict)  # status key → message
    # DALs whose build is not the pinned one (``sidecar.builds``): not run, and their
    # running instance keeps serving. Reported, but the host stays registered.
    refused: dict[str, str] = field(default_factory=dict)

    @property
    def ports(self) -> set[int]:
        """Every host port these specs use (the ones to claim from other agents)."""
        return {p for spec in self.specs.values() for p in spec.host_ports.values()}


@dataclass(frozen=True)
class HostPorts:
    """What the host's ports look like to this agent now."""

    port_range: tuple[int, int]  # where DAL listeners may go (--dal-ports)
    in_use: Callable[[int], bool]  # bound by someone on this host
    claimed: Mapping[int, str]  # port → owner: handed out by other agents of this process
    proxy_holds: Collection[int] = ()  # listener ports the running Envoy already holds


def nothing_to_do(observed: Iterable[Observed]) -> Desired:
    """No goal yet (first start, server unreachable, no cache): touch nothing."""
    return Desired(blocked=frozenset(o.dal for o in observed))


def build_desired(
    cfg: RuntimeConfig,
    observed: Iterable[Observed],
    ports: HostPorts,
    *,
    shard: str,
    node: str,
    network_mode: str,
    bind_address: str,
    builds: Mapping[str, BuildCheck] | None = None,
) -> Desired:
    """The specs of every container DAL of ``cfg`` with host ports assigned.
    ``builds``: the pinned DALs' checks; a refused one is left as it runs."""
    observed = list(observed)
    errors: dict[str, str] = {}
    blocked: set[str] = set()
    specs: dict[str, DalSpec] = {}
    reserved: dict[int, str] = {}
    for name, listener in cfg.proxy_config.public_listeners.items():
        port = listener.address.port
        if port is None:
            continue
        reserved[port] = f"public listener {name}"
        if port not in ports.proxy_holds and ports.in_use(port):
            errors[f"listener.{name}"] = (
                f"port {port} of public listener {name} is in use by another process; "
                f"Envoy cannot listen there: free it or change "
                f"proxy_config.public_listeners.{name}.path"
            )
    reserved.update(ports.claimed)
    best: dict[str, Observed] = {}
    for o in sorted(observed, key=lambda o: (not o.live, -(o.started_at or 0))):
        best.setdefault(o.dal, o)
    assignment = assign_ports(
        {name: list(d.container_listeners) for name, d in cfg.container_dals.items()},
        previous={dal: dict(o.ports) for dal, o in best.items()},
        reserved=reserved,
        owned={p for o in observed if o.live for p in o.ports.values()},
        in_use=ports.in_use,
        port_range=ports.port_range,
    )
    builds = builds or {}
    refused: dict[str, str] = {}
    for name in cfg.container_dals:
        check = builds.get(name)
        if isinstance(check, Refused):
            blocked.add(name)
            refused[name] = check.message
            continue
        if name in assignment.errors:
            blocked.add(name)
            errors[f"dal.{name}"] = assignment.errors[name]
            continue
        try:
            specs[name] = build_spec(
                cfg,
                name,
                shard=shard,
                node=node,
                host_ports=assignment.ports[name],
                network_mode=network_mode,
                bind_address=bind_address,
                build=check.digest if check is not None else None,
            )
        except SpecError as e:
            blocked.add(name)
            errors[f"dal.{name}"] = str(e)
    return Desired(specs=specs, blocked=frozenset(blocked), errors=errors, refused=refused)
