"""Cross-field rules of a runtime config, each reported at the key it is about.

Also the one definition of who serves a listener (``listener_topology``): the
translator and the checks must agree on it, so both call this.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from .errors import Problem, quote
from .model import NETWORK_SCHEMES, RuntimeConfig
from .resilience import check_resilience


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
        raise ValueError(f"{quote(url)} is not a usable URL ({e}); use scheme://host:port") from None
    if parts.scheme not in NETWORK_SCHEMES:
        raise ValueError(f"{quote(url)} has scheme {quote(parts.scheme)}; allowed: {allowed}")
    kind, default_port = NETWORK_SCHEMES[parts.scheme]
    if not parts.hostname:
        raise ValueError(f"{quote(url)} has no host; use {parts.scheme}://host:port")
    port = port or default_port
    if not port:
        raise ValueError(f"{quote(url)} has no port and {parts.scheme}:// has no default; add :port")
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
    """Every cross-field rule's problems, in the order the rules are listed."""
    problems: list[Problem] = []
    for rule in RULES:
        problems.extend(Problem(file, path, message) for path, message in rule(cfg))
    return problems


_Found = list[tuple[str, str]]  # (key path, message)


def _unique_dal_names(cfg: RuntimeConfig) -> _Found:
    return [
        (f"network_dals.{name}", f"DAL name {quote(name)} is also a container DAL; names must be unique")
        for name in sorted(set(cfg.container_dals) & set(cfg.network_dals))
    ]


def _free_ports(cfg: RuntimeConfig) -> _Found:
    """Public listeners are unique; internal (non-public) listeners collide neither
    with them nor with each other."""
    found: _Found = []
    public = cfg.proxy_config.public_listeners
    seen: dict[str, str] = {}
    for lname, lst in public.items():
        where = str(lst.address)
        if where in seen:
            found.append((
                f"proxy_config.public_listeners.{lname}.path",
                f"{where} is already used by public listener {quote(seen[where])}; "
                "each listener needs its own port",
            ))
        else:
            seen[where] = lname
    internal_ports: dict[int, tuple[str, str]] = {}
    for dname, dal in sorted(cfg.container_dals.items()):
        for lname, port in sorted(dal.listener_ports().items()):
            if lname in public:
                continue
            key = f"container_dals.{dname}.container_listeners.{lname}"
            if str(port) in seen:
                found.append((key, f"internal listener {quote(lname)} on port {port} collides "
                              f"with public listener {quote(seen[str(port)])}; choose another port"))
            prior = internal_ports.get(port)
            if prior and prior[1] != lname:
                found.append((key, f"port {port} is already the internal listener "
                              f"{quote(prior[1])} of DAL {quote(prior[0])}; choose another port"))
            internal_ports.setdefault(port, (dname, lname))
    return found


def _network_dals(cfg: RuntimeConfig) -> _Found:
    """Usable URLs whose kind fits the public listener they serve."""
    found: _Found = []
    public = cfg.proxy_config.public_listeners
    for dname, ndal in sorted(cfg.network_dals.items()):
        if not ndal.listeners:
            found.append((f"network_dals.{dname}.listeners", "a network DAL needs at least one listener"))
        for lname, url in sorted(ndal.listeners.items()):
            key = f"network_dals.{dname}.listeners.{lname}"
            try:
                target = parse_network_url(url)
            except ValueError as e:
                found.append((key, str(e)))
                continue
            if ndal.mode == "static":
                try:
                    ipaddress.ip_address(target.host)
                except ValueError:
                    found.append((key, f"mode static needs an IP address, not {quote(target.host)}; "
                                  "use mode logical_dns or strict_dns for host names"))
            if lname not in public:
                found.append((key, f"no public listener {quote(lname)}; a network DAL serves public "
                              f"listeners only (public listeners: {_names(public)})"))
                continue
            mode = public[lname].mode
            fits = {"tcp": ("tcp",), "http": ("http",), "grpc": ("grpc", "http")}[mode]
            if target.kind not in fits:
                schemes = ", ".join(s + "://" for s, (k, _) in NETWORK_SCHEMES.items() if k in fits)
                found.append((key, f"{target.scheme}:// cannot serve {mode} listener {quote(lname)}; "
                              f"{mode} listeners take {schemes}"))
    return found


def _wiring(cfg: RuntimeConfig) -> _Found:
    """Both ends are DALs that share a listener; no chains; no TCP mirroring."""
    found: _Found = []
    public = cfg.proxy_config.public_listeners
    served = dal_listeners(cfg)
    targets = {w.target for w in cfg.wiring.values()}
    for source, w in sorted(cfg.wiring.items()):
        key = f"wiring.{source}"
        if source not in served:
            found.append((key, f"{quote(source)} is not a DAL (DALs: {_names(served)})"))
            continue
        if w.target not in served:
            found.append((f"{key}.target", f"{quote(w.target)} is not a DAL (DALs: {_names(served)})"))
            continue
        if w.target == source:
            found.append((f"{key}.target", "a DAL cannot be wired to itself"))
            continue
        if source in targets:
            found.append((key, f"{quote(source)} is itself a wiring target; chained wiring is not supported"))
        shared = served[source] & served[w.target]
        if not shared:
            found.append((f"{key}.target", f"{quote(source)} and {quote(w.target)} serve no listener "
                          f"in common ({source}: {_names(served[source])}; "
                          f"{w.target}: {_names(served[w.target])})"))
        if w.mode == "shadow":
            for lname in sorted(shared):
                if lname in public and public[lname].mode == "tcp":
                    found.append((f"{key}.mode", f"listener {quote(lname)} is tcp and Envoy cannot "
                                  "mirror TCP streams; shadow works on grpc and http listeners "
                                  "(use split for tcp)"))
    return found


def _one_primary_each(cfg: RuntimeConfig) -> _Found:
    """Every public listener is served, by exactly one primary; so is every internal one."""
    found: _Found = []
    public = cfg.proxy_config.public_listeners
    topo = listener_topology(cfg)
    for lname in sorted(public):
        t = topo.get(lname)
        key = f"proxy_config.public_listeners.{lname}"
        if t is None:
            found.append((key, f"no DAL serves listener {quote(lname)}; add it to a DAL's "
                          "container_listeners or a network DAL's listeners"))
        elif t.primary is None:
            found.append((key, f"listener {quote(lname)} is served by {', '.join(t.servers)} with "
                          "no wiring to choose the primary; add wiring (shadow or split) between them"))
    for lname, t in sorted(topo.items()):
        if lname not in public and t.primary is None:
            found.append((f"container_dals.{t.servers[0]}.container_listeners.{lname}",
                          f"internal listener {quote(lname)} is served by {', '.join(t.servers)} "
                          "with no wiring to choose the primary"))
    return found


def _registrations(cfg: RuntimeConfig) -> _Found:
    return [
        (f"registrations.{i}.address", "needs at least one discovery name")
        for i, reg in enumerate(cfg.registrations)
        if not reg.addresses()
    ]


def _names(names: Iterable[str]) -> str:
    listed = sorted(names)
    shown = ", ".join(listed[:20]) + (f", … ({len(listed)} in all)" if len(listed) > 20 else "")
    return shown or "none"


RULES: tuple[Callable[[RuntimeConfig], _Found], ...] = (
    _unique_dal_names,
    _free_ports,
    _network_dals,
    _wiring,
    _one_primary_each,
    _registrations,
    check_resilience,
)
