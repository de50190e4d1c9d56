"""Runtime config → gateway IR: the first, pure stage of translation.

Who serves a listener is decided once, by ``listener_topology``; this stage only
names what follows from it (listeners, upstreams, traffic shares, mirrors) and
refuses what the proxy cannot do yet, reporting every reason at once.
"""

from __future__ import annotations

from dataclasses import dataclass

from xds_server.config import (
    ConfigError,
    ListenerTopology,
    Problem,
    RuntimeConfig,
    listener_topology,
    parse_network_url,
)
from xds_server.config.model import PublicListener, ShardFile
from xds_server.security.identity import IdentityError, consumer_id
from xds_server.security.providers import (
    DEFAULT_GRPC_READ_METHODS,
    Providers,
    certificate_secret,
    method_pattern_regex,
    trust_bundle_secret,
)

from .ir import (
    FULL_SHARE,
    Authz,
    Backend,
    GatewayIR,
    HostPort,
    Listener,
    Mirror,
    Protocol,
    Tls,
    UnixSocket,
    Upstream,
)

# Internal listeners are for callers on this host only (a DAL's health check, an
# operator's curl): they must never be reachable from the network.
LOOPBACK = "127.0.0.1"

# What a TLS listener offers in ALPN: gRPC is HTTP/2 only; HTTP takes either.
_ALPN: dict[Protocol, tuple[str, ...]] = {"grpc": ("h2",), "http": ("h2", "http/1.1"), "tcp": ()}

_Names = dict[tuple[str, str], str]  # (DAL, listener) → upstream name


_DEFAULT_PROVIDERS = Providers()


@dataclass(frozen=True)
class TranslateOptions:
    """What a translation needs besides the config; the defaults are safe for tests."""

    public_address: str = LOOPBACK  # production binds public listeners on 0.0.0.0
    file: str = "<config>"  # names the config in every Problem
    connect_timeout_s: float = 1.0
    providers: Providers = _DEFAULT_PROVIDERS  # what tls_creds / authz names mean here


DEFAULT_OPTIONS = TranslateOptions()


def build_ir(cfg: RuntimeConfig, options: TranslateOptions = DEFAULT_OPTIONS) -> GatewayIR:
    """The gateway IR of ``cfg``; ConfigError lists everything that cannot be translated.

    ``cfg`` has passed the loader's checks (``load_shard*`` run ``check_runtime``, the
    only place they run); this stage adds only what the proxy cannot do yet.
    """
    names = _upstream_names(cfg)
    consumers, consumer_problems = _consumers(cfg, options)
    problems = (
        _unknown_providers(cfg, options)
        + consumer_problems
        + _name_clashes(cfg, names, options.file)
    )
    if problems:
        raise ConfigError(problems)
    listeners = [
        _listener(cfg, t, names, options, consumers) for t in listener_topology(cfg).values()
    ]
    return GatewayIR(
        listeners=tuple(sorted(listeners, key=lambda lst: lst.name)),
        upstreams=_upstreams(cfg, names, options),
    )


def _upstream_names(cfg: RuntimeConfig) -> _Names:
    names: _Names = {}
    for dal, cdal in cfg.container_dals.items():
        for lname in cdal.container_listeners:
            names[(dal, lname)] = f"dal.{dal}.{lname}"
    for dal, ndal in cfg.network_dals.items():
        for lname in ndal.listeners:
            names[(dal, lname)] = f"net.{dal}.{lname}"
    return names


def _unknown_providers(cfg: RuntimeConfig, options: TranslateOptions) -> list[Problem]:
    """A name the server does not know would be a silent security hole if ignored."""
    problems: list[Problem] = []
    providers = options.providers
    for lname, public in sorted(cfg.proxy_config.public_listeners.items()):
        key = f"proxy_config.public_listeners.{lname}"
        for key_name, name, known in (
            ("tls_creds", public.tls_creds, providers.tls),
            ("authz", public.authz, providers.authz),
        ):
            if name is not None and name not in known:
                allowed = ", ".join(sorted(known)) or "none are configured"
                problems.append(Problem(
                    options.file,
                    f"{key}.{key_name}",
                    f"{key_name} {name[:80]!r} is not a provider of this server; known: {allowed}",
                ))
        if public.authz is not None and public.tls_creds is None:
            problems.append(Problem(
                options.file,
                f"{key}.authz",
                "authz needs tls_creds on the same listener: callers are identified by "
                "their client certificate",
            ))
    return problems


_Consumers = tuple[tuple[str, ...], tuple[str, ...]]  # (read-write, read-only) SPIFFE IDs


def _consumers(cfg: RuntimeConfig, options: TranslateOptions) -> tuple[_Consumers, list[Problem]]:
    """The SPIFFE IDs of the shard's consumers by group (none when the shard file
    has no deploy desires: authorization then denies everyone)."""
    desires = cfg.deploy_desires if isinstance(cfg, ShardFile) else None
    if desires is None:
        return ((), ()), []
    groups: dict[str, set[str]] = {"read-write": set(), "read-only": set()}
    problems: list[Problem] = []
    for i, consumer in enumerate(desires.consumers):
        try:
            identity = consumer_id(consumer.type, consumer.value, options.providers.trust_domain)
        except IdentityError as e:
            problems.append(Problem(options.file, f"deploy_desires.consumers[{i}].value", str(e)))
            continue
        groups[consumer.group].add(identity.uri)
    # Read-write includes every read: a caller in both groups is read-write.
    read_only = groups["read-only"] - groups["read-write"]
    return (tuple(sorted(groups["read-write"])), tuple(sorted(read_only))), problems


def _name_clashes(cfg: RuntimeConfig, names: _Names, file: str) -> list[Problem]:
    """Dots are allowed in DAL and listener names, so two pairs can read alike
    (``a.b`` + ``c`` and ``a`` + ``b.c``); Envoy would merge their clusters."""
    problems: list[Problem] = []
    owner: dict[str, tuple[str, str]] = {}
    for (dal, lname), name in sorted(names.items()):
        if name not in owner:
            owner[name] = (dal, lname)
            continue
        other_dal, other_lname = owner[name]
        key = (
            f"container_dals.{dal}.container_listeners.{lname}"
            if dal in cfg.container_dals
            else f"network_dals.{dal}.listeners.{lname}"
        )
        problems.append(Problem(
            file,
            key,
            f"its cluster would be named {name!r} like that of DAL {other_dal!r} listener "
            f"{other_lname!r}; rename the DAL or the listener so the names differ",
        ))
    return problems


def _protocol(cfg: RuntimeConfig, lname: str) -> Protocol:
    public = cfg.proxy_config.public_listeners.get(lname)
    return public.mode if public else "tcp"


def _upstreams(cfg: RuntimeConfig, names: _Names, options: TranslateOptions) -> tuple[Upstream, ...]:
    upstreams = [
        Upstream(
            name=names[(dal, lname)],
            dal=dal,
            listener=lname,
            protocol=_protocol(cfg, lname),
            discovery="reported",
            connect_timeout_s=options.connect_timeout_s,
        )
        for dal, cdal in cfg.container_dals.items()
        for lname in cdal.container_listeners
    ]
    for dal, ndal in cfg.network_dals.items():
        for lname, url in ndal.listeners.items():
            target = parse_network_url(url)
            upstreams.append(Upstream(
                name=names[(dal, lname)],
                dal=dal,
                listener=lname,
                protocol=_protocol(cfg, lname),
                discovery=ndal.mode,
                connect_timeout_s=options.connect_timeout_s,
                target=HostPort(target.host, target.port),
            ))
    return tuple(sorted(upstreams, key=lambda u: u.name))


def _listener(
    cfg: RuntimeConfig,
    topo: ListenerTopology,
    names: _Names,
    options: TranslateOptions,
    consumers: _Consumers,
) -> Listener:
    primary = topo.primary
    assert primary is not None, "check_runtime refuses a listener without one primary"
    public = cfg.proxy_config.public_listeners.get(topo.name)
    if public is None:
        # Envoy cannot mirror a TCP stream, so shadow targets get no copy here;
        # split wiring still applies, as on a public tcp listener.
        port = cfg.container_dals[primary].listener_ports()[topo.name]
        return Listener(
            name=f"internal.{topo.name}",
            listener=topo.name,
            exposure="internal",
            protocol="tcp",
            bind=HostPort(LOOPBACK, port),
            backends=_backends(topo, primary, names),
        )
    http = public.mode != "tcp"
    return Listener(
        name=f"public.{topo.name}",
        listener=topo.name,
        exposure="public",
        protocol=public.mode,
        bind=_public_bind(public, options),
        backends=_backends(topo, primary, names),
        mirrors=_mirrors(topo, primary, names) if http else (),
        route=f"route.{topo.name}" if http else None,
        tls=_tls(public) if public.tls_creds else None,
        authz=_authz(cfg, topo, consumers) if public.authz else None,
    )


def _tls(public: PublicListener) -> Tls:
    provider = public.tls_creds or ""
    return Tls(certificate_secret(provider), trust_bundle_secret(provider), _ALPN[public.mode])


def _authz(cfg: RuntimeConfig, topo: ListenerTopology, consumers: _Consumers) -> Authz:
    """The DALs serving a listener declare which gRPC methods are reads (the union of
    what they declare; the default when none does)."""
    declared: set[str] = set()
    serving = [topo.primary, *(t for t, _ in topo.splits)]
    for dal in serving:
        if dal is None:
            continue
        spec = cfg.container_dals.get(dal) or cfg.network_dals.get(dal)
        if spec is not None and spec.read_methods:
            declared.update(spec.read_methods)
    patterns = sorted(declared) if declared else DEFAULT_GRPC_READ_METHODS
    read_write, read_only = consumers
    return Authz(read_write, read_only, tuple(method_pattern_regex(p) for p in patterns))


def _public_bind(public: PublicListener, options: TranslateOptions) -> HostPort | UnixSocket:
    address = public.address
    if address.socket:
        return UnixSocket(address.socket)
    return HostPort(options.public_address, address.port or 0)


def _share(percent: float) -> int:
    return round(percent * FULL_SHARE / 100)


def _backends(topo: ListenerTopology, primary: str, names: _Names) -> tuple[Backend, ...]:
    """Primary first, then split targets; a zero share is left out because Envoy's
    tcp_proxy refuses a zero weight and a lone backend needs no weights at all."""
    splits = [Backend(names[(target, topo.name)], _share(p)) for target, p in topo.splits]
    rest = FULL_SHARE - sum(b.share for b in splits)
    backends = [Backend(names[(primary, topo.name)], rest), *splits]
    return tuple(b for b in backends if b.share > 0)


def _mirrors(topo: ListenerTopology, primary: str, names: _Names) -> tuple[Mirror, ...]:
    mirrors = []
    for target, percent in topo.shadows:
        share = _share(percent)
        runtime_key = None if share == FULL_SHARE else f"dgw.shadow.{primary}.{target}"
        mirrors.append(Mirror(names[(target, topo.name)], share, runtime_key))
    return tuple(mirrors)
