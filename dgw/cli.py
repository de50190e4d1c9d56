"""The ``dgw`` command: validate, render, server, bootstrap, sidecar, up.

Expected failures (bad config, port in use, missing file) end with a message and a
non-zero exit, never a stack trace.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from pathlib import Path

import yaml

from xds_server.config import ConfigError, load_any, load_shard
from xds_server.settings import DEFAULT_ADMIN, DEFAULT_XDS

LOG_FORMAT = "%(asctime)s level=%(levelname)s logger=%(name)s %(message)s"


def _config_files(paths: list[str]) -> list[Path]:
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files.extend(sorted(q for q in p.iterdir() if q.suffix in (".yaml", ".yml")))
        else:
            files.append(p)
    return files


def cmd_validate(args: argparse.Namespace) -> int:
    failed = 0
    for path in _config_files(args.paths):
        try:
            load_any(path)
        except ConfigError as e:
            failed += 1
            for problem in e.problems:
                print(problem)
        else:
            if not args.quiet:
                print(f"{path}: ok")
    return 1 if failed else 0


def cmd_render(args: argparse.Namespace) -> int:
    from xds_server.translate import TranslateOptions, render_yaml, translate

    try:
        config = load_shard(args.path)
        resources = translate(
            config.runtime(),
            TranslateOptions(public_address=args.public_address, file=str(args.path)),
        )
    except ConfigError as e:
        for problem in e.problems:
            print(problem, file=sys.stderr)
        return 1
    sys.stdout.write(render_yaml(resources))
    return 0


def cmd_bootstrap(args: argparse.Namespace) -> int:
    from xds_server.bootstrap import make_bootstrap, make_client_bootstrap

    try:
        if args.client:
            config = make_client_bootstrap(args.node_id, args.xds, args.client, args.listen, args.admin, args.delta)
        elif not args.shard:
            raise ValueError("give --shard (a gateway instance) or --client ADDRESS/LISTENER (a client-side proxy)")
        else:
            config = make_bootstrap(args.shard, args.node_id, args.xds, args.admin, args.delta)
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

    if not Path(args.config_dir).is_dir():
        print(f"dgw server: config dir {args.config_dir} does not exist", file=sys.stderr)
        return 2
    settings = ServerSettings(
        config_dir=args.config_dir,
        xds=args.xds,
        admin=args.admin,
        public_address=args.public_address,
        data_dir=args.data_dir,
    )
    try:
        asyncio.run(run(settings))
    except (OSError, ValueError) as e:
        print(f"dgw server: {e}", file=sys.stderr)
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dgw", description="Data Gateway control plane and agent")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    sub = parser.add_subparsers(dest="command", required=True)

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
                   help="where node reports are kept across restarts "
                        "(default: ~/.local/state/dgw-server/<hash of the config dir>)")
    p.set_defaults(func=cmd_server)

    p = sub.add_parser("bootstrap", help="print an Envoy bootstrap for a gateway instance or a client-side proxy")
    p.add_argument("--shard", help="the gateway instance's shard")
    p.add_argument("--node-id", required=True)
    p.add_argument("--xds", required=True, help="the xds_server's gRPC HOST:PORT")
    p.add_argument("--admin", default="127.0.0.1:9901", help="Envoy admin HOST:PORT")
    p.add_argument("--delta", action="store_true", help="use incremental (delta) xDS")
    p.add_argument("--client", metavar="ADDRESS/LISTENER",
                   help="a client-side forward proxy to the hosts registered under ADDRESS, for LISTENER")
    p.add_argument("--listen", default="127.0.0.1:15000", help="with --client: where the proxy listens")
    p.add_argument("--format", choices=["yaml", "json"], default="yaml")
    p.set_defaults(func=cmd_bootstrap)

    from bench import cli as bench_cli
    from sidecar import cli as sidecar_cli

    from . import up

    sidecar_cli.add_commands(sub)
    up.add_command(sub)
    bench_cli.add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, format=LOG_FORMAT, stream=sys.stderr)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
