"""What one DAL instance must look like on this host: the runtime-neutral spec.

A ``DalSpec`` is built from the shard's runtime config plus the host ports the agent
assigned. Its hash goes on the container (or process record) as a label, so the plan
can tell an unchanged DAL from one whose config changed without asking anyone.
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field

from xds_server.config.model import ContainerDal, Healthcheck, RuntimeConfig, parse_duration

MANAGED_BY = "dgw-sidecar"
LABEL_MANAGED_BY = "dgw.managed-by"
LABEL_SHARD = "dgw.shard"
LABEL_NODE = "dgw.node"
LABEL_DAL = "dgw.dal"
LABEL_SPEC_HASH = "dgw.spec-hash"
LABEL_PORTS = "dgw.ports"

# The proxy's name as a DAL sees it (the seed's health check curls http://envoy:8080).
ENVOY_HOST_NAME = "envoy"

_ENV_UNSAFE = re.compile(r"[^A-Z0-9]")


class SpecError(ValueError):
    """A DAL cannot be run as configured; the message says what to change."""


def listener_env_name(listener: str) -> str:
    """``secure-grpc`` → ``DGW_LISTENER_SECURE_GRPC_PORT``."""
    return f"DGW_LISTENER_{_ENV_UNSAFE.sub('_', listener.upper())}_PORT"


@dataclass(frozen=True)
class HealthSpec:
    """docker-compose's healthcheck with durations in seconds and Docker's Test list."""

    test: tuple[str, ...]  # ("CMD", argv...) or ("CMD-SHELL", command)
    interval_s: float
    timeout_s: float
    retries: int
    start_period_s: float

    @classmethod
    def from_config(cls, hc: Healthcheck | None) -> HealthSpec | None:
        if hc is None or hc.disable:
            return None
        test = hc.command()
        if test[0] == "NONE":
            return None
        return cls(
            test=tuple(test),
            interval_s=parse_duration(hc.interval),
            timeout_s=parse_duration(hc.timeout),
            # Docker treats 0 as "use the default" (3): keep the same meaning here.
            retries=hc.retries or 3,
            start_period_s=parse_duration(hc.start_period),
        )

    def argv(self) -> list[str]:
        """The command to run: CMD execs its argv, CMD-SHELL goes through /bin/sh."""
        if self.test[0] == "CMD-SHELL":
            return ["/bin/sh", "-c", self.test[1]]
        return list(self.test[1:])


@dataclass(frozen=True)
class ListenerSpec:
    name: str
    container_port: int  # from container_listeners
    host_port: int  # assigned by the agent; where Envoy reaches the DAL
    env_port: int  # what the DAL is told to listen on (DGW_LISTENER_<NAME>_PORT)


@dataclass(frozen=True)
class DalSpec:
    shard: str
    node: str
    name: str
    image: str | None
    command: tuple[str, ...] | None  # None: the image's own command
    env: tuple[tuple[str, str], ...]
    listeners: tuple[ListenerSpec, ...]
    healthcheck: HealthSpec | None
    network_mode: str  # host | bridge | process
    # The pinned build it runs (``sidecar.builds``): a new pin is a new spec.
    build: str | None = None
    spec_hash: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if not self.spec_hash:
            object.__setattr__(self, "spec_hash", _hash(self))

    @property
    def env_dict(self) -> dict[str, str]:
        return dict(self.env)

    @property
    def host_ports(self) -> dict[str, int]:
        return {lst.name: lst.host_port for lst in self.listeners}

    def labels(self) -> dict[str, str]:
        return {
            LABEL_MANAGED_BY: MANAGED_BY,
            LABEL_SHARD: self.shard,
            LABEL_NODE: self.node,
            LABEL_DAL: self.name,
            LABEL_SPEC_HASH: self.spec_hash,
            LABEL_PORTS: json.dumps(self.host_ports, sort_keys=True, separators=(",", ":")),
        }


def _hash(spec: DalSpec) -> str:
    body = {
        "image": spec.image,
        "command": spec.command,
        "env": spec.env,
        "listeners": [
            (lst.name, lst.container_port, lst.host_port, lst.env_port) for lst in spec.listeners
        ],
        "healthcheck": None
        if spec.healthcheck is None
        else [
            list(spec.healthcheck.test),
            spec.healthcheck.interval_s,
            spec.healthcheck.timeout_s,
            spec.healthcheck.retries,
            spec.healthcheck.start_period_s,
        ],
        "network_mode": spec.network_mode,
    }
    if spec.build is not None:  # only then: an unpinned DAL keeps the hash it had
        body["build"] = spec.build
    text = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def parse_ports_label(value: str | None) -> dict[str, int]:
    """The ``dgw.ports`` label back into {listener: host port}; junk reads as empty."""
    if not value:
        return {}
    try:
        data = json.loads(value)
    except ValueError:
        return {}
    if not isinstance(data, dict):
        return {}
    return {str(k): int(v) for k, v in data.items() if isinstance(v, int)}


def command_of(dal: ContainerDal) -> tuple[str, ...] | None:
    """The argv to exec. A string is split like docker-compose's ``command`` (no shell):
    the DAL itself is then PID 1 of its container and gets the stop signal, where a
    shell would swallow it and Docker would kill the DAL after its grace period. Write
    ``[sh, -c, "..."]`` for shell features."""
    cmd = dal.container_cmd
    if cmd is None:
        return None
    if isinstance(cmd, str):
        try:
            return tuple(shlex.split(cmd))
        except ValueError as e:
            raise SpecError(f"container_cmd {cmd!r} cannot be split into words: {e}") from None
    return tuple(cmd)


def build_spec(
    cfg: RuntimeConfig,
    name: str,
    *,
    shard: str,
    node: str,
    host_ports: Mapping[str, int],
    network_mode: str,
    bind_address: str,
    build: str | None = None,
) -> DalSpec:
    """The spec of DAL ``name`` given its assigned host ports.

    ``network_mode`` is ``host``/``bridge`` (Docker) or ``process``. A DAL listens on
    its container port in bridge mode (Docker publishes it on the host port) and on
    the host port itself otherwise, so two DALs that both say 8980 share a host.
    ``build``: the pinned digest it was verified to run; a container is then made
    from that image ID, never from a name that could point elsewhere by then.
    """
    dal = cfg.container_dals[name]
    env: dict[str, str] = dal.env_strings()
    seen: dict[str, str] = {}
    listeners = []
    for lname, cport in sorted(dal.listener_ports().items()):
        var = listener_env_name(lname)
        if var in seen:
            raise SpecError(
                f"listeners {seen[var]!r} and {lname!r} of dal {name} both map to {var}; "
                "rename one of them"
            )
        seen[var] = lname
        hport = host_ports[lname]
        env_port = cport if network_mode == "bridge" else hport
        env[var] = str(env_port)
        listeners.append(ListenerSpec(lname, cport, hport, env_port))
    # The agent's own variables win over the config's: the ports are its decision.
    env["DGW_DAL_NAME"] = name
    env["DGW_SHARD"] = shard
    env["DGW_BIND_ADDRESS"] = "0.0.0.0" if network_mode == "bridge" else bind_address
    # How to reach the proxy: containers resolve the name ``envoy``; a host process
    # cannot (no /etc/hosts entry of its own), so it gets the address.
    env["DGW_ENVOY_HOST"] = bind_address if network_mode == "process" else ENVOY_HOST_NAME
    if network_mode == "process" and dal.container_cmd is None:
        raise SpecError(
            f"dal {name} has no container_cmd: the process runtime runs container_cmd on "
            "the host and cannot use an image's own command; add container_cmd or run "
            "with --runtime docker"
        )
    if network_mode != "process" and not dal.image:
        raise SpecError(f"dal {name} has no image: the docker runtime needs one")
    image = build if build is not None and network_mode != "process" else dal.image
    return DalSpec(
        shard=shard,
        node=node,
        name=name,
        image=image,
        command=command_of(dal),
        env=tuple(sorted(env.items())),
        listeners=tuple(listeners),
        healthcheck=HealthSpec.from_config(dal.healthcheck),
        network_mode=network_mode,
        build=build,
    )
