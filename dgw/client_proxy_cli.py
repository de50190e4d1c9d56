"""The ``dgw client-proxy`` command line; the proxy itself is ``dgw.client_proxy``
(loaded only when the command runs, so ``dgw --help`` stays quick)."""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from common.hostport import split_host_port
from xds_server.settings import DEFAULT_JOIN, DEFAULT_XDS

from .contexts import Context, ContextError, load, selected

if TYPE_CHECKING:
    from .client_proxy import Options


class UsageError(Exception):
    pass


def _context(args: argparse.Namespace) -> tuple[str | None, Context | None]:
    """The context whose server the proxy's defaults come from (``--context``,
    ``$DGW_CONTEXT``, the current one), if any."""
    contexts = load()
    name, _ = selected(contexts, args.dgw_context)
    return name, contexts.contexts.get(name) if name else None


def options_from_args(args: argparse.Namespace) -> Options:
    from .client_proxy import Options

    if (args.identity is None) == (args.join is None):
        raise UsageError("give exactly one of --identity CERT KEY (see `dgw ca issue`) and --join TOKEN "
                         "(`dgw token create --role client --identity ACCOUNT-APP`)")
    name, context = _context(args)
    xds = args.xds or (context.xds if context else None) or DEFAULT_XDS
    join_server = args.join_server or (context.join if context else None) or DEFAULT_JOIN
    ca = args.ca
    if args.join is not None and ca is None and context is not None:
        ca = context.path("ca")
    if args.join is not None and ca is None and not args.insecure:
        raise UsageError("--join needs --ca: the server's CA bundle, to check the server before "
                         "sending it the token" + (f" (context {name} names none)" if name else
                                                   " (a context's ca: `dgw config get-contexts`)"))
    split_host_port(args.listen, "--listen", allow_zero=False)
    split_host_port(xds, "--xds", allow_zero=False)
    if name is not None:
        used = [f"{flag} {value}" for flag, value, given in (
            ("--xds", xds, args.xds), ("--join-server", join_server, args.join_server), ("--ca", ca, args.ca))
            if not given and value is not None and ((flag != "--join-server" and flag != "--ca") or args.join)]
        if used:
            print(f"dgw client-proxy: context {name}: {', '.join(used)}", file=sys.stderr)
    return Options(
        shard=args.shard,
        listener=args.listener,
        address=args.address or args.shard,
        listen=args.listen,
        xds=xds,
        node_id=args.node_id or f"client-{socket.gethostname()}-{os.getpid()}"[-64:],
        delta=args.delta,
        identity=(args.identity[0], args.identity[1]) if args.identity else None,
        ca=ca,
        join=args.join,
        state_dir=args.state_dir,
        insecure=args.insecure,
        join_server=join_server,
        context=name,
        **({} if args.ready_timeout is None else {"ready_timeout_s": args.ready_timeout}),
    )


def cmd_client_proxy(args: argparse.Namespace) -> int:
    try:
        options = options_from_args(args)
    except (UsageError, ValueError, ContextError) as e:
        print(f"dgw client-proxy: {e}", file=sys.stderr)
        return 2
    from envoy_proxy import EnvoyError

    from .client_proxy import ClientProxyError, serve_until_signalled

    try:
        return asyncio.run(serve_until_signalled(options))
    except (ClientProxyError, EnvoyError, OSError) as e:
        print(f"dgw client-proxy: {e}", file=sys.stderr)
        return 1


def add_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "client-proxy", help="a local forward proxy that originates mTLS to a shard's gateways",
        description="Run an Envoy that listens on --listen (loopback, plaintext for the application) "
                    "and forwards every connection over mTLS, with the application's identity, to a "
                    "healthy gateway of --shard registered under --address for --listener. Runs in the "
                    "foreground; SIGTERM or Ctrl-C stops it and its Envoy.",
    )
    p.add_argument("--shard", required=True, help="the gateways' shard: they must present spiffe://TD/gateway/SHARD")
    p.add_argument("--listener", required=True, help="the shard's public listener, e.g. secure_postgres")
    p.add_argument("--address", help="the registration address the gateways register under (default: the shard)")
    p.add_argument("--listen", required=True, help="where the application connects, e.g. 127.0.0.1:15432")
    p.add_argument("--xds", default=None,
                   help=f"the xds_server's gRPC HOST:PORT (default: the context's, else {DEFAULT_XDS})")
    p.add_argument("--identity", nargs=2, metavar=("CERT", "KEY"), type=Path,
                   help="the application's certificate and key (PEM; `dgw ca issue` makes a demo one)")
    p.add_argument("--ca", type=Path, help="the trust bundle gateways chain to (default: bundle.pem beside CERT); with --join, "
                        "the bundle the server's certificate is checked against (default: the context's)")
    p.add_argument("--join", metavar="TOKEN", help="get an identity from the server's CA with a one-time client token "
                   "(dgw token create --role client --identity ACCOUNT-APP)")
    p.add_argument("--join-server", default=None,
                   help=f"the server's join port, for the first certificate with --join (default: the "
                        f"context's, else {DEFAULT_JOIN})")
    p.add_argument("--ready-timeout", type=float, default=None, metavar="SECONDS",
                   help="give up, saying why, when it cannot serve after this long: no server, no "
                        "gateway registered (default: 30)")
    p.add_argument("--node-id", help="this proxy's node id at the xds_server (default: client-HOST-PID)")
    p.add_argument("--delta", action="store_true", help="use incremental (delta) xDS")
    p.add_argument("--insecure", action="store_true",
                   help="the xds_server is plaintext (dgw server --insecure); by default the proxy's "
                        "Envoy reaches it over mTLS with the application's identity")
    p.add_argument("--state-dir", type=Path,
                   help="where the SDS socket, Envoy's bootstrap and log go (default: a private temporary "
                        "directory, removed at exit)")
    p.set_defaults(func=cmd_client_proxy)
