"""``dgw config``: the contexts (``dgw/contexts.py``), as ``kubectl config`` shows them.

``get-contexts``, ``current-context``, ``use-context NAME``, ``view`` (tokens
redacted), ``set-context NAME`` and ``delete-context NAME``. ``dgw up`` writes and
selects the context of the instance it starts; ``dgw down`` removes it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

from xds_server.settings import ADMIN_SOCKET_FILE

from .contexts import Context, ContextError, check_name, config_path, load, redacted, update
from .ops import table


def _token(context: Context) -> str:
    if context.token is not None:
        return "inline"
    return str(context.token_file) if context.token_file is not None else "-"


def cmd_get_contexts(args: argparse.Namespace) -> int:
    contexts = load()
    if args.output != "table":
        return cmd_view(args)
    if not contexts.contexts:
        print(f"no contexts in {config_path()} (`dgw up` writes one; `dgw config set-context` adds one)")
        return 0
    rows = [["*" if name == contexts.current_context else "", name, c.server, _token(c), str(c.ca or "-"),
             c.instance or "-"] for name, c in sorted(contexts.contexts.items())]  # fmt: skip
    print(table(["CURRENT", "NAME", "SERVER", "TOKEN", "CA", "INSTANCE"], rows))
    return 0


def cmd_current_context(args: argparse.Namespace) -> int:
    current = load().current_context
    if not current:
        print(f"dgw config: no current context in {config_path()} (`dgw config use-context NAME`)",
              file=sys.stderr)  # fmt: skip
        return 1
    print(current)
    return 0


def cmd_use_context(args: argparse.Namespace) -> int:
    with update() as contexts:
        if args.name not in contexts.contexts:
            known = ", ".join(sorted(contexts.contexts)) or "none"
            raise ContextError(f"no context {args.name!r} in {config_path()} (contexts: {known})")
        contexts.current_context = args.name
    print(f"current context: {args.name}")
    return 0


def cmd_view(args: argparse.Namespace) -> int:
    data = redacted(load())
    if args.output == "json":
        print(json.dumps(data, indent=1))
    else:
        sys.stdout.write(yaml.safe_dump(data, sort_keys=False) if data else "{}\n")
    return 0


def cmd_set_context(args: argparse.Namespace) -> int:
    name = check_name(args.name)
    fields = {"server": args.server, "token_file": args.token_file, "ca": args.ca,
              "admin_socket": args.admin_socket, "xds": args.xds, "join": args.join}  # fmt: skip
    if args.token is not None:
        fields["token"] = args.token
    if args.data_dir is not None:
        data_dir = args.data_dir.absolute()
        fields["admin_socket"] = fields["admin_socket"] or data_dir / ADMIN_SOCKET_FILE
        fields["token_file"] = fields["token_file"] or data_dir / "admin.token"
        fields["ca"] = fields["ca"] or data_dir / "ca" / "ca.crt"
    given = {k: v for k, v in fields.items() if v is not None}
    with update() as contexts:
        old = contexts.contexts.get(name)
        merged = {**(old.model_dump(exclude_none=True) if old else {}), **given}
        if "token" in given:
            merged.pop("token_file", None)
        if "token_file" in given:
            merged.pop("token", None)
        if "server" not in merged:
            raise ContextError(f"context {name} is new: give its --server")
        try:
            contexts.contexts[name] = Context.model_validate(merged)
        except ValueError as e:
            raise ContextError(f"context {name}: {e}") from None
        if contexts.current_context is None:
            contexts.current_context = name
    print(f"context {name} {'updated' if old else 'created'} in {config_path()}")
    return 0


def cmd_delete_context(args: argparse.Namespace) -> int:
    with update() as contexts:
        if contexts.contexts.pop(args.name, None) is None:
            raise ContextError(f"no context {args.name!r} in {config_path()}")
        if contexts.current_context == args.name:
            contexts.current_context = None
    print(f"context {args.name} deleted")
    return 0


def _guarded(args: argparse.Namespace) -> int:
    try:
        code: int = args.config_func(args)
    except ContextError as e:
        print(f"dgw config: {e}", file=sys.stderr)
        return 1
    return code


def add_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("config", help="contexts: which server dgw talks to, with which token and CA",
                       description=f"Contexts live in {config_path()} ($XDG_CONFIG_HOME/dgw/config.yaml).")
    commands = p.add_subparsers(dest="config_command", required=True, metavar="COMMAND")
    c = commands.add_parser("get-contexts", help="list the contexts; * marks the current one")
    c.set_defaults(config_func=cmd_get_contexts)
    c = commands.add_parser("current-context", help="print the current context's name")
    c.set_defaults(config_func=cmd_current_context)
    c = commands.add_parser("use-context", help="make NAME the current context")
    c.add_argument("name", metavar="NAME")
    c.set_defaults(config_func=cmd_use_context)
    c = commands.add_parser("view", help="the contexts file, tokens redacted (-o json for JSON)")
    c.set_defaults(config_func=cmd_view)
    c = commands.add_parser("set-context", help="add or change a context (the first one becomes current)")
    c.add_argument("name", metavar="NAME")
    c.add_argument("--server", help="the admin API, http(s)://HOST:PORT")
    c.add_argument("--token", help="the token itself (kept in the file, 0600; prefer --token-file)")
    c.add_argument("--token-file", type=Path, help="a file holding the token")
    c.add_argument("--ca", type=Path, help="the server's CA certificate (https, `dgw ca`, client-proxy --join)")
    c.add_argument("--admin-socket", type=Path, help="the server's admin socket (DATA_DIR/admin.sock)")
    c.add_argument("--data-dir", type=Path,
                   help="a local server's data dir: its admin socket, admin.token and CA unless given")
    c.add_argument("--xds", help="the control plane's gRPC HOST:PORT (client-proxy)")
    c.add_argument("--join", help="the join port HOST:PORT (client-proxy --join)")
    c.set_defaults(config_func=cmd_set_context)
    c = commands.add_parser("delete-context", help="remove a context")
    c.add_argument("name", metavar="NAME")
    c.set_defaults(config_func=cmd_delete_context)
    p.set_defaults(func=_guarded)
