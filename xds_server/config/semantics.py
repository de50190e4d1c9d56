"""Cross-field rules of a runtime config, each reported at the key it is about.

Also the one definition of who serves a listener (``listener_topology``): the
translator and the checks must agree on it, so both call this.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from .errors import Problem
from .model import NETWORK_SCHEMES, RuntimeConfig


@dataclass(frozen=True)
class NetworkTarget:
    scheme: str
    kind: str  # "tcp" | "http" | "grpc": the listener modes it can serve
    host: str
    port: int


@dataclass
class ListenerTopology:
    """Who serves one listener name: the primary DAL and the DALs wired to it."""

    name: str
    servers: list[str] = field(default_factory=list)  # every DAL that serves it
    primary: str | None = None
    shadows: list[tuple[str, float]] = field(default_factory=list)  # (target, percent)
    splits: list[tuple[str, float]] = field(default_factory=list)  # (target, percent)


def parse_network_url(url: str) -> NetworkTarget:
    """``postgresql://host:5432`` → target; ValueError says what a usable URL is."""
    allowed = ", ".join(f"{s}://" for s in NETWORK_SCHEMES)
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise ValueError(f"{url!r} is not a usable URL ({e}); use scheme://host:port") from None
    if parts.scheme not in NETWORK_SCHEMES:
        raise ValueError(f"{url!r} has scheme {parts.scheme!r}; allowed: {allowed}")
    kind, default_port = NETWORK_SCHEMES[parts.scheme]
    if not parts.hostname:
        raise ValueError(f"{url!r} has no host; use {parts.scheme}://host:port")
    port = port or default_port
    if not port:
        raise ValueError(f"{url!r} has no port and {parts.scheme}:// has no default; add :port")
    return NetworkTarget(parts.scheme, kind, parts.hostname, port)


def dal_listeners(cfg: RuntimeConfig) -> dict[str, set[str]]:
    """DAL name → the listener names it serves (container and network DALs)."""
    out: dict[str, set[str]] = {n: set(d.container_listeners) for n, d in cfg.container_dals.items()}
    for n, d in cfg.network_dals.items():
        out[n] = set(d.listeners)
    return out


def listener_topology(cfg: RuntimeConfig) -> dict[str, ListenerTopology]:
    """For every listener name: its servers, the primary, its shadow and split targets.

    A wiring ``X: {target: Y}`` applies on every listener both X and Y serve; there Y
    is not a primary. The primary is the one server left (None if zero or several).
    """
    served = dal_listeners(cfg)
    topo: dict[str, ListenerTopology] = {}
    for dal in sorted(served):
        for lname in sorted(served[dal]):
            topo.setdefault(lname, ListenerTopology(lname)).servers.append(dal)
    for t in topo.values():
        wired_targets = set()
        for source, w in sorted(cfg.wiring.items()):
            if source in t.servers and w.target in t.servers and source != w.target:
                wired_targets.add(w.target)
                (t.shadows if w.mode == "shadow" else t.splits).append((w.target, w.share))
        primaries = [s for s in t.servers if s not in wired_targets]
        t.primary = primaries[0] if len(primaries) == 1 else None
    return topo


def check_runtime(cfg: RuntimeConfig, file: str) -> list[Problem]:
    problems: list[Problem] = []

    def bad(path: str, message: str) -> None:
        problems.append(Problem(file, path, message))

    public = cfg.proxy_config.public_listeners
    served = dal_listeners(cfg)
    dals = sorted(served)
    both = set(cfg.container_dals) & set(cfg.network_dals)
    for name in sorted(both):
        bad(f"network_dals.{name}", f"DAL name {name!r} is also a container DAL; names must be unique")

    # Ports: public listeners are unique, and internal (non-public) listeners do not
    # collide with them or with each other.
    seen: dict[str, str] = {}
    for lname, lst in public.items():
        where = str(lst.address)
        if where in seen:
            bad(
                f"proxy_config.public_listeners.{lname}.path",
                f"{where} is already used by public listener {seen[where]!r}; each listener needs its own port",
            )
        else:
            seen[where] = lname
    internal_ports: dict[int, tuple[str, str]] = {}
    for dname, dal in sorted(cfg.container_dals.items()):
        for lname, port in sorted(dal.listener_ports().items()):
            if lname in public:
                continue
            key = f"container_dals.{dname}.container_listeners.{lname}"
            if str(port) in seen:
                bad(
                    key,
                    f"internal listener {lname!r} on port {port} collides with public listener "
                    f"{seen[str(port)]!r}; choose another port",
                )
            prior = internal_ports.get(port)
            if prior and prior[1] != lname:
                bad(
                    key,
                    f"port {port} is already the internal listener {prior[1]!r} of DAL {prior[0]!r}; "
                    "choose another port",
                )
            internal_ports.setdefault(port, (dname, lname))

    # Network DALs: usable URLs whose kind fits the public listener they serve.
    for dname, ndal in sorted(cfg.network_dals.items()):
        if not ndal.listeners:
            bad(f"network_dals.{dname}.listeners", "a network DAL needs at least one listener")
        for lname, url in sorted(ndal.listeners.items()):
            key = f"network_dals.{dname}.listeners.{lname}"
            try:
                target = parse_network_url(url)
            except ValueError as e:
                bad(key, str(e))
                continue
            if ndal.mode == "static":
                try:
                    ipaddress.ip_address(target.host)
                except ValueError:
                    bad(
                        key,
                        f"mode static needs an IP address, not {target.host!r}; "
                        "use mode logical_dns or strict_dns for host names",
                    )
            if lname not in public:
                bad(key, f"no public listener {lname!r}; a network DAL serves public listeners only "
                    f"(public listeners: {', '.join(sorted(public)) or 'none'})")
                continue
            mode = public[lname].mode
            fits = {"tcp": ("tcp",), "http": ("http",), "grpc": ("grpc", "http")}[mode]
            if target.kind not in fits:
                bad(key, f"{target.scheme}:// cannot serve {mode} listener {lname!r}; "
                    f"{mode} listeners take {', '.join(s + '://' for s, (k, _) in NETWORK_SCHEMES.items() if k in fits)}")

    # Wiring: both ends are DALs that share a listener; no chains; no TCP mirroring.
    targets = {w.target for w in cfg.wiring.values()}
    for source, w in sorted(cfg.wiring.items()):
        key = f"wiring.{source}"
        if source not in served:
            bad(key, f"{source!r} is not a DAL (DALs: {', '.join(dals) or 'none'})")
            continue
        if w.target not in served:
            bad(f"{key}.target", f"{w.target!r} is not a DAL (DALs: {', '.join(dals) or 'none'})")
            continue
        if w.target == source:
            bad(f"{key}.target", "a DAL cannot be wired to itself")
            continue
        if source in targets:
            bad(key, f"{source!r} is itself a wiring target; chained wiring is not supported")
        shared = served[source] & served[w.target]
        if not shared:
            bad(f"{key}.target", f"{source!r} and {w.target!r} serve no listener in common "
                f"({source}: {', '.join(sorted(served[source])) or 'none'}; "
                f"{w.target}: {', '.join(sorted(served[w.target])) or 'none'})")
        if w.mode == "shadow":
            for lname in sorted(shared):
                if lname in public and public[lname].mode == "tcp":
                    bad(f"{key}.mode", f"listener {lname!r} is tcp and Envoy cannot mirror TCP "
                        "streams; shadow works on grpc and http listeners (use split for tcp)")

    # Every public listener is served, by exactly one primary.
    topo = listener_topology(cfg)
    for lname in sorted(public):
        t = topo.get(lname)
        key = f"proxy_config.public_listeners.{lname}"
        if t is None:
            bad(key, f"no DAL serves listener {lname!r}; add it to a DAL's container_listeners "
                "or a network DAL's listeners")
        elif t.primary is None:
            bad(key, f"listener {lname!r} is served by {', '.join(t.servers)} with no wiring to "
                "choose the primary; add wiring (shadow or split) between them")
    for lname, t in sorted(topo.items()):
        if lname not in public and t.primary is None:
            bad(f"container_dals.{t.servers[0]}.container_listeners.{lname}",
                f"internal listener {lname!r} is served by {', '.join(t.servers)} with no "
                "wiring to choose the primary")

    for i, reg in enumerate(cfg.registrations):
        if not reg.addresses():
            bad(f"registrations.{i}.address", "needs at least one discovery name")
    return problems
