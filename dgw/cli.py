"""The ``dgw`` command: validate, render, server, bootstrap, sidecar, up.

Expected failures (bad config, port in use, missing file) end with a message and a
non-zero exit, never a stack trace.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any, cast

import yaml

from xds_server.config import ConfigError, DeployFile, Problem, ShardFile, load_any
from xds_server.settings import DEFAULT_ADMIN, DEFAULT_ALLOWED_ENV, DEFAULT_JOIN, DEFAULT_XDS

from .parser import DgwParser, install_globals, parse

LOG_FORMAT = "%(asctime)s level=%(levelname)s logger=%(name)s %(message)s"


def _config_files(paths: list[str]) -> tuple[list[Path], list[str]]:
    """The YAML files named or found (recursively) under ``paths``, and the problems
    with paths that hold none: validating nothing is a failure, not a pass."""
    files: list[Path] = []
    problems: list[str] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(
                q for q in p.rglob("*")
                if q.suffix in (".yaml", ".yml") and q.is_file()
                and not any(part.startswith(".") for part in q.relative_to(p).parts)  # .venv, .git
            )
            if not found:
                problems.append(f"{p}: no .yaml or .yml files in this directory or below")
            files.extend(found)
        else:
            files.append(p)
    return files, problems


def check_file(path: Path, public_address: str = "127.0.0.1") -> ShardFile | DeployFile:
    """Load ``path`` and, for a runtime config, translate it: everything the server
    would refuse, ``dgw validate`` refuses too. Raises ConfigError."""
    from xds_server.deploy.artifacts import CONFIG_VERSION_VAR, config_version
    from xds_server.translate import TranslateOptions, translate

    env = dict(os.environ)
    if not env.get(CONFIG_VERSION_VAR):  # as the server does: the file's own config version
        try:
            env[CONFIG_VERSION_VAR] = config_version(path.read_bytes().decode("utf-8", "replace"))
        except OSError:
            pass  # load_any says why it cannot read the file
    config = load_any(path, env)
    if isinstance(config, ShardFile):
        translate(config, TranslateOptions(public_address=public_address, file=str(path)))
    return config


def cmd_validate(args: argparse.Namespace) -> int:
    files, problems = _config_files(args.paths)
    for problem in problems:
        print(problem)
    failed = len(problems)
    for path in files:
        try:
            check_file(path)
        except ConfigError as e:
            failed += 1
            for p in e.problems:
                print(p)
        else:
            if not args.quiet:
                print(f"{path}: ok")
    return 1 if failed else 0


def cmd_render(args: argparse.Namespace) -> int:
    from xds_server.translate import (
        TranslateOptions,
        build_ir,
        render_yaml,
        resilience_summary,
        to_resources,
    )

    try:
        config = load_any(args.path)
        if isinstance(config, DeployFile):
            raise ConfigError([Problem(
                str(args.path), "",
                "holds only deploy_desires: there is nothing to render (render takes a "
                "runtime config: proxy_config, container_dals, network_dals, wiring)",
            )])
        gateway = build_ir(config, TranslateOptions(public_address=args.public_address, file=str(args.path)))
    except ConfigError as e:
        for problem in e.problems:
            print(problem, file=sys.stderr)
        return 1
    # The effective resilience in words first, as YAML comments: the output stays a
    # YAML document of the resources, which carry the same policies in Envoy's terms.
    sys.stdout.write("".join(f"# {line}\n" for line in resilience_summary(config, gateway)))
    sys.stdout.write(render_yaml(to_resources(gateway)))
    return 0


def cmd_bootstrap(args: argparse.Namespace) -> int:
    from envoy_proxy.bootstrap import make_bootstrap, make_client_bootstrap

    try:
        if args.client and args.shard:
            raise ValueError("--shard and --client exclude each other: --shard makes a gateway "
                             "instance's bootstrap, --client a client-side proxy's")
        if args.client:
            config = make_client_bootstrap(args.node_id, args.xds, args.client, args.listen, args.delta,
                                           admin_socket=args.admin_socket)
        elif not args.shard:
            raise ValueError("give --shard (a gateway instance) or --client ADDRESS/LISTENER (a client-side proxy)")
        else:
            config = make_bootstrap(args.shard, args.node_id, args.xds, args.delta, admin_socket=args.admin_socket)
    except ValueError as e:
        print(f"dgw bootstrap: {e}", file=sys.stderr)
        return 2
    if args.format == "json":
        json.dump(config, sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        yaml.safe_dump(config, sys.stdout, sort_keys=False)
    return 0


def cmd_server(args: argparse.Namespace) -> int:
    from xds_server.server import run
    from xds_server.settings import ServerSettings
    from xds_server.store import StoreError

    if not Path(args.config_dir).is_dir():
        print(f"dgw server: config dir {args.config_dir} does not exist", file=sys.stderr)
        return 2
    settings = ServerSettings(
        config_dir=args.config_dir,
        xds=args.xds,
        admin=args.admin,
        public_address=args.public_address,
        data_dir=args.data_dir,
        metrics_public=args.metrics_public,
        allowed_env=tuple(args.allow_env or DEFAULT_ALLOWED_ENV),
        **_security_settings(args),
    )
    try:
        asyncio.run(run(settings))
    except (OSError, ValueError, StoreError) as e:
        print(f"dgw server: {e}", file=sys.stderr)
        return 1
    return 0


def _security_settings(args: argparse.Namespace) -> dict[str, Any]:
    """``dgw server``'s control-channel security flags (docs/security.md) and replica flags."""
    values: dict[str, Any] = {"insecure": args.insecure, "join": args.join,
                              "ca_dir": args.ca_dir, "server_names": tuple(args.server_name)}
    if args.cert_ttl is not None:
        values["cert_ttl_s"] = args.cert_ttl
    values.update(store=args.store, replica_id=args.replica_id, max_connection_age_s=args.max_connection_age)
    if args.lease_ttl is not None:
        values["lease_ttl_s"] = args.lease_ttl
    return values


def _duration(text: str) -> float:
    """``90s``, ``30m``, ``24h`` or plain seconds → seconds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    number, unit = (text[:-1], text[-1]) if text and text[-1] in units else (text, "s")
    try:
        value = float(number) * units[unit]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration (e.g. 24h, 30m, 90s)") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: a duration must be positive")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = DgwParser(prog="dgw", description="Data Gateway control plane and agent")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    # Typed as the plain kind that every `add_command(sub)` takes; it makes DgwParsers.
    sub = cast("argparse._SubParsersAction[argparse.ArgumentParser]",
               parser.add_subparsers(dest="command", required=True, metavar="COMMAND"))

    p = sub.add_parser("validate", help="check runtime configs and deploy desires")
    p.add_argument("paths", nargs="+", help="YAML files or directories of them")
    p.add_argument("-q", "--quiet", action="store_true", help="print problems only")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("render", help="print the Envoy resources a runtime config becomes")
    p.add_argument("path")
    p.add_argument("--public-address", default="127.0.0.1", help="bind address of public listeners")
    p.set_defaults(func=cmd_render)

    p = sub.add_parser("server", help="run the xds_server (ADS + Gateway API + admin HTTP)")
    p.add_argument("--config-dir", required=True, help="one shard per DIR/<shard>.yaml")
    p.add_argument("--xds", default=DEFAULT_XDS, help="gRPC address for Envoys and sidecars")
    p.add_argument("--admin", default=DEFAULT_ADMIN, help="admin HTTP address")
    p.add_argument("--public-address", default="127.0.0.1",
                   help="where Envoys bind public listeners (0.0.0.0 in production)")
    p.add_argument("--data-dir", type=Path, default=None,
                   help="where the config store (every shard version), tokens, the CA and node "
                        "reports are kept; one server per directory (default: $DGW_DATA_DIR, else "
                        "~/.local/share/dgw, where `dgw` looks for a local server's token and CA)")
    p.add_argument("--metrics-public", action="store_true",
                   help="serve GET /metrics without a token (default: a reader token is needed)")
    p.add_argument("--allow-env", action="append", metavar="PATTERN",
                   help="a variable ${VAR} in a shard file may read: a name or a shell pattern "
                        "(DGW_DB_*); repeatable, replaces the default DGW_*; the platform's own "
                        "(DGW_TOKEN, DGW_JOIN_TOKEN, ...) never")
    sec = p.add_argument_group("control channel security (docs/security.md)")
    sec.add_argument("--insecure", action="store_true",
                     help="plaintext gRPC, no CA, nothing authorized; loopback only, and logged loudly")
    sec.add_argument("--ca-dir", type=Path, default=None,
                     help="the CA (ca.key 0600, ca.crt); made on first start (default: DATA_DIR/ca)")
    sec.add_argument("--cert-ttl", type=_duration, default=None,
                     help="lifetime of the certificates the server signs and of its own (default: 24h)")
    sec.add_argument("--join", default=DEFAULT_JOIN,
                     help="HOST:PORT of the join port: TLS without a client certificate, for a new "
                          "host's first certificate with a join token (default: %(default)s)")
    sec.add_argument("--server-name", action="append", default=[], metavar="NAME",
                     help="a DNS name or IP the server's certificate holds besides loopback "
                          "(the address remote hosts dial); repeatable")
    ha = p.add_argument_group("several replicas (docs/ha.md)")
    ha.add_argument("--store", default=None, metavar="etcd://HOST:PORT[,HOST:PORT...][/PREFIX]",
                    help="keep the config store, tokens and node reports in etcd: this server is then "
                         "one replica of several (default: SQLite in the data dir)")
    ha.add_argument("--replica-id", default=None, help="this replica's name (default: HOSTNAME-PID)")
    ha.add_argument("--lease-ttl", type=_duration, default=None,
                    help="how long a dead replica's jobs and a dead host's report outlive them (default: 10s)")
    ha.add_argument("--max-connection-age", type=_duration, default=None,
                    help="close control connections after this long (±10%%), so nodes spread over the "
                         "replicas again (default: never; e.g. 30m with replicas)")
    p.set_defaults(func=cmd_server)

    p = sub.add_parser("bootstrap", help="print an Envoy bootstrap for a gateway instance or a client-side proxy")
    p.add_argument("--shard", help="the gateway instance's shard")
    p.add_argument("--node-id", required=True)
    p.add_argument("--xds", required=True,
                   help="the xds_server's gRPC HOST:PORT; several replicas: IP:PORT,IP:PORT,...")
    p.add_argument("--admin-socket", metavar="PATH",
                   help="Envoy's admin on this Unix socket, mode 0600 (default: no admin); admin "
                        "never listens on a TCP port, where any local user could stop Envoy")
    p.add_argument("--delta", action="store_true", help="use incremental (delta) xDS")
    p.add_argument("--client", metavar="ADDRESS/LISTENER",
                   help="a client-side forward proxy to the hosts registered under ADDRESS, for LISTENER")
    p.add_argument("--listen", default="127.0.0.1:15000",
                   help="with --client: where the proxy listens (default: %(default)s)")
    p.add_argument("--format", choices=["yaml", "json"], default="yaml")
    p.set_defaults(func=cmd_bootstrap)

    from bench import cli as bench_cli
    from dgw.migrate import cli as migrate_cli
    from sidecar import cli as sidecar_cli

    from . import (
        artifact_cli,
        ca_cli,
        client_proxy_cli,
        completion,
        config_cli,
        daemon,
        logs,
        ls_cli,
        node_cli,
        ops,
        plan_cli,
        rollout_cli,
        schema,
        stats_cli,
        up,
    )

    sidecar_cli.add_commands(sub)
    up.add_command(sub)
    daemon.add_command(sub)
    logs.add_command(sub)
    ls_cli.add_command(sub)
    config_cli.add_command(sub)
    bench_cli.add_commands(sub)
    ops.add_commands(sub)
    stats_cli.add_command(sub)
    artifact_cli.add_command(sub)
    plan_cli.add_command(sub)
    rollout_cli.add_command(sub)
    migrate_cli.add_command(sub)
    schema.add_command(sub)
    ca_cli.add_command(sub)
    node_cli.add_command(sub)
    client_proxy_cli.add_command(sub)
    completion.add_command(sub)
    install_globals(parser)  # last: every command above, and any added since, gets them
    return parser


def _version() -> str:
    try:
        return importlib.metadata.version("data-gateway")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed)"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parse(parser, argv)
    logging.basicConfig(level=args.log_level, format=LOG_FORMAT, stream=sys.stderr)
    try:
        code: int = args.func(args)
        sys.stdout.flush()  # inside the try: a closed pipe shows here, not at exit
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader left (`dgw bootstrap ... | head -3`): end quietly, as cat does.
        # stdout goes to devnull so the interpreter's final flush cannot fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    return code


if __name__ == "__main__":
    sys.exit(main())
