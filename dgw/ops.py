"""The operators' commands, over the admin HTTP API, in the manner of kubectl:
``dgw get``, ``apply``, ``diff``, ``wiring``, ``history``, ``rollback``, ``status``,
``token``, ``audit``.

Tables by default, ``-o json|yaml`` for scripts. A failure prints the server's message
(no traceback) and exits 1. A mutation names its base version (``If-Match``): the one a
GET just returned, or ``--force-version N``; a concurrent change makes the server refuse
it with the current version instead of losing either edit.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from common.text import printable
from dgw.client import Client, ClientError, etag_version, resolve

Command = Callable[[argparse.Namespace, Client], int]
_TYPES = ("CDS", "EDS", "LDS", "RDS", "SDS")
_SHORT_STATE = {"SYNCED": "SYNCED", "STALE": "STALE", "NACKED": "NACKED", "NOT_SENT": "NOT SENT"}


# --- output -------------------------------------------------------------------------


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Columns aligned on the widest cell, like kubectl's. A cell is one line whatever
    it holds: control characters (CR, LF, ANSI escapes, bidi overrides) are escaped."""
    cells = [[str(h) for h in headers]] + [["" if c is None else printable(str(c)) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    return "\n".join("   ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells)


def emit(args: argparse.Namespace, data: Any, render: Callable[[Any], str]) -> None:
    if args.output == "json":
        print(json.dumps(data, indent=1))
    elif args.output == "yaml":
        sys.stdout.write(yaml.safe_dump(data, sort_keys=False))
    else:
        # Whatever the server or a shard file holds reaches the terminal escaped: it may
        # move the cursor, clear the screen or forge a line otherwise.
        text = printable(render(data), keep="\n\t")
        if text:
            print(text)


def _cut(text: str, width: int) -> str:
    """At most ``width`` characters, an ellipsis marking a cut (``-o json`` has it all)."""
    return text if len(text) <= width else text[: width - 1] + "…"


def _short_time(value: Any) -> str:
    return str(value or "")[:19].replace("T", " ")


# --- versions -----------------------------------------------------------------------


def _base_version(args: argparse.Namespace, client: Client, shard: str, *, must_exist: bool) -> int:
    """The version a mutation starts from: ``--force-version``, or the shard's current
    one (0: the shard does not exist yet, ``If-Match: "0"``)."""
    if args.force_version is not None:
        return int(args.force_version)
    try:
        response = client.request("GET", f"/v1/shards/{_path(shard)}")
    except ClientError as e:
        if e.status == 404 and not must_exist:
            return 0
        raise
    version = etag_version(response.headers)
    if version is None and isinstance(response.body, dict):
        body_version = response.body.get("version")
        version = body_version if isinstance(body_version, int) else None
    if version is None:
        raise ClientError(f"the server did not say shard {shard!r}'s version (no ETag); "
                          "give the base version with --force-version N")  # fmt: skip
    return version


def _path(segment: str) -> str:
    from urllib.parse import quote

    return quote(segment, safe="")


def _mutate(
    args: argparse.Namespace, client: Client, method: str, path: str, body: dict[str, Any] | None,
    shard: str, *, must_exist: bool = True, query: dict[str, Any] | None = None,
) -> Any:  # fmt: skip
    base = _base_version(args, client, shard, must_exist=must_exist)
    dry_run = bool(getattr(args, "dry_run", False))
    query = {**(query or {}), **({"dry_run": True} if dry_run else {})}
    response = client.request(method, path, body, headers={"If-Match": f'"{base}"'}, query=query or None)
    return response.body


def _render_change(data: Any) -> str:
    if not isinstance(data, dict):
        return str(data)
    if data.get("dry_run"):
        lines = ["dry run: nothing stored"]
        diff = data.get("config_diff") or ""
        lines.append(diff.rstrip() if diff.strip() else "config: no change")
        resources = data.get("resources") or {}
        for kind in ("added", "removed"):
            for r in resources.get(kind, []):
                lines.append(f"{kind}: {_resource_name(r)}")
        for r in resources.get("changed", []):
            lines.append(f"changed: {_resource_name(r)}")
            if isinstance(r, dict) and r.get("diff"):
                lines.append(str(r["diff"]).rstrip())
        return "\n".join(lines)
    shard, version, previous = data.get("shard"), data.get("version"), data.get("previous_version")
    if data.get("unchanged"):
        return f"shard {shard}: version {version} (unchanged)"
    return f"shard {shard}: version {version}" + (f" (was {previous})" if previous else " (new)")


def _resource_name(r: Any) -> str:
    return f"{r.get('type')} {r.get('name')}" if isinstance(r, dict) else str(r)


# --- commands -----------------------------------------------------------------------


def cmd_get(args: argparse.Namespace, client: Client) -> int:
    if args.what == "shards":
        if args.name:
            raise ClientError("'dgw get shards' lists every shard; 'dgw get shard NAME' shows one")
        data = client.get("/v1/shards")
        emit(args, data, _render_shards)
        return 0
    if not args.name:
        raise ClientError("which shard? 'dgw get shard NAME' ('dgw get shards' lists them)")
    data = client.get(f"/v1/shards/{_path(args.name)}")
    emit(args, data, _render_shard)
    return 0


def _version_of(s: dict[str, Any]) -> Any:
    return s.get("version", s.get("config_version"))


def _render_shards(data: Any) -> str:
    rows = []
    for s in data.get("shards", []):
        source = s.get("source") or ""
        if s.get("source_missing"):
            source += " (missing)"
        rejected = "yes" if s.get("rejected") else ""
        nodes = s.get("nodes")
        rows.append([s.get("shard"), _version_of(s), s.get("owner", ""), source,
                     len(nodes) if isinstance(nodes, list) else nodes, rejected])  # fmt: skip
    return table(["SHARD", "VERSION", "OWNER", "SOURCE", "NODES", "REJECTED"], rows)


def _render_shard(data: Any) -> str:
    head = [f"shard:   {data.get('shard')}", f"version: {_version_of(data)}"]
    for key in ("owner", "source"):
        if data.get(key):
            head.append(f"{key}:{' ' * (8 - len(key))}{data[key]}")
    if data.get("source_missing"):
        head.append("source missing: the file is gone; the shard keeps serving its last version")
    deploy = data.get("deploy")
    if deploy:
        head.append(f"tier:    {deploy.get('tier')}")
        if deploy.get("owners"):
            head.append(f"owners:  {', '.join(deploy['owners'])}")
        if deploy.get("locations"):
            head.append(f"locations: {', '.join(deploy['locations'])}")
        for pin in deploy.get("pins") or []:
            head.append(f"pin:     {pin['artifact']} = {pin['digest'][:19]} ({pin['ref']}; {pin['source']})")
    rejected = data.get("rejected")
    if rejected:
        head.append("rejected: " + "; ".join(rejected.get("errors", [])) if isinstance(rejected, dict) else "yes")
    text = data.get("yaml") or data.get("config") or ""
    return "\n".join(head) + ("\n---\n" + text.rstrip() if text else "")


def _read_file(path: str) -> str:
    try:
        return Path(path).read_text() if path != "-" else sys.stdin.read()
    except OSError as e:
        raise ClientError(f"-f {path}: cannot read it ({e.strerror or e})") from None


def cmd_apply(args: argparse.Namespace, client: Client) -> int:
    if args.file != "-" and Path(args.file).is_dir():
        return _apply_dir(args, client)
    if not args.shard:
        raise ClientError(f"-f {args.file} is one shard's file: name it with --shard S "
                          "(or give a directory of SHARD.yaml files)")  # fmt: skip
    body = {"yaml": _read_file(args.file), "message": args.message or f"dgw apply -f {args.file}"}
    data = _mutate(args, client, "PUT", f"/v1/shards/{_path(args.shard)}", body, args.shard, must_exist=False)
    emit(args, data, _render_change)
    return 0


def _apply_dir(args: argparse.Namespace, client: Client) -> int:
    """Every ``SHARD.yaml`` of a directory as one batch: all stored, or none."""
    directory = Path(args.file)
    files = sorted(p for p in directory.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())
    if args.shard:
        raise ClientError(f"-f {directory} is a directory: its files name their shards; drop --shard")
    if not files:
        raise ClientError(f"-f {directory}: no SHARD.yaml files in it")
    listing = client.request("GET", "/v1/shards").body
    versions = {s.get("shard"): s.get("version") for s in listing.get("shards", [])}
    changes = [{"shard": f.stem, "yaml": _read_file(str(f)), "base_version": versions.get(f.stem) or 0}
               for f in files]  # fmt: skip
    body = {"changes": changes, "message": args.message or f"dgw apply -f {directory}"}
    dry_run = bool(getattr(args, "dry_run", False))
    data = client.request("POST", "/v1/batch", body, query={"dry_run": True} if dry_run else None).body
    emit(args, data, _render_batch)
    return 0


def _render_batch(data: Any) -> str:
    shards = data.get("shards", {}) if isinstance(data, dict) else {}
    if isinstance(data, dict) and data.get("dry_run"):
        return "\n".join(_render_change({"shard": s, "dry_run": True, **d}) for s, d in sorted(shards.items()))
    return "\n".join(_render_change({"shard": s, **d}) for s, d in sorted(shards.items()))


def cmd_diff(args: argparse.Namespace, client: Client) -> int:
    args.dry_run = True
    return cmd_apply(args, client)


def cmd_wiring(args: argparse.Namespace, client: Client) -> int:
    body: dict[str, Any] = {"op": args.op}
    needs = {"shadow": ("source", "target"), "split": ("source", "target", "percent"),
             "promote": ("target",), "clear": ("source",)}[args.op]  # fmt: skip
    for name in needs:
        if getattr(args, name) is None:
            raise ClientError(f"{args.op} needs --{name}")
        body[name] = getattr(args, name)
    if args.op == "shadow" and args.percent is not None:
        body["percent"] = args.percent
    extra = [n for n in ("source", "target", "percent") if n not in body and getattr(args, n) is not None]
    if extra:
        raise ClientError(f"dgw wiring {args.op} takes no --{extra[0]}")
    body["message"] = args.message or f"dgw wiring {args.op}"
    data = _mutate(args, client, "POST", f"/v1/shards/{_path(args.shard)}/wiring", body, args.shard)
    emit(args, data, _render_change)
    return 0


def cmd_history(args: argparse.Namespace, client: Client) -> int:
    data = client.get(f"/v1/shards/{_path(args.shard)}/history", limit=args.limit, before=args.before)
    emit(args, data, lambda d: table(
        ["VERSION", "TIME", "AUTHOR", "SOURCE", "MESSAGE"],
        [[v.get("version"), _short_time(v.get("time")), v.get("author"), v.get("source"),
          _cut(v.get("message") or "", 60)] for v in d.get("versions", [])],
    ))  # fmt: skip
    return 0


def cmd_rollback(args: argparse.Namespace, client: Client) -> int:
    body = {"to": args.to, "message": args.message or f"dgw rollback to version {args.to}"}
    data = _mutate(args, client, "POST", f"/v1/shards/{_path(args.shard)}/rollback", body, args.shard)
    emit(args, data, _render_change)
    return 0


def cmd_delete(args: argparse.Namespace, client: Client) -> int:
    """Delete a shard (its history stays); refused while its Envoys are connected,
    unless ``--force``."""
    body = {"message": args.message} if args.message else None
    data = _mutate(args, client, "DELETE", f"/v1/shards/{_path(args.name)}", body, args.name,
                   query={"force": True} if args.force else None)  # fmt: skip
    emit(args, data, lambda d: f"shard {args.name}: deleted (version {d.get('version')}); "
                               f"its versions stay in `dgw history {args.name}`")
    return 0


# --- status -------------------------------------------------------------------------


def _render_status(data: Any) -> str:
    nodes = data.get("nodes", [])
    if not nodes:
        shards = ", ".join(sorted(data.get("shards", {}))) or "none"
        return f"no node is connected (shards: {shards})"
    types = [t for t in _TYPES if any(t in n.get("types", {}) for n in nodes)]
    located = any(n.get("location") for n in nodes)
    # Grouped by where the nodes run (their sidecars' --account/--region/--stack).
    nodes = sorted(nodes, key=lambda n: (n.get("location") or "", n.get("shard") or "", n.get("node") or ""))
    rows = []
    for n in nodes:
        dals = n.get("dals") or {}
        rows.append([
            *([n.get("location") or "-"] if located else []),
            n.get("shard"), n.get("node"), n.get("protocol").upper() if n.get("protocol") else "",
            _short_time(n.get("connected_since")),
            *(_SHORT_STATE.get(n["types"][t]["state"], n["types"][t]["state"]) if t in n["types"] else ""
              for t in types),
            ", ".join(f"{d}={v.get('health', '?')}" for d, v in dals.items()) or "-",
        ])  # fmt: skip
    lines = [table([*(["LOCATION"] if located else []), "SHARD", "NODE", "PROTOCOL", "CONNECTED", *types, "DALS"],
                   rows)]  # fmt: skip
    if located:
        by: dict[str, list[Any]] = {}
        for n in nodes:
            by.setdefault(n.get("location") or "-", []).append(n)
        lines.append("by location: " + "; ".join(
            f"{where} {sum(1 for n in group if n.get('in_sync'))}/{len(group)} in sync" for where, group in by.items()))
    shards = data.get("shards", {})
    for n in nodes:
        for t, s in n.get("types", {}).items():
            if s.get("state") == "NACKED" and s.get("nack"):
                lines.append(f"{n['node']} {t} NACKED: {s['nack']}")
        for key, message in (n.get("problems") or {}).items():
            owners = (shards.get(n.get("shard")) or {}).get("owners") or []
            tell = f" [owners: {', '.join(owners)}]" if owners and key.startswith("refused.") else ""
            lines.append(f"{n['shard']}/{n['node']} {key}: {message}{tell}")
    return "\n".join(lines)


def _reached(wanted: str | None, info: dict[str, Any]) -> tuple[bool, str]:
    """Whether the shard is at ``wanted``: a version number from ``dgw history`` (that
    one or a later one), or a config version hash (exactly); and where it is."""
    if wanted is not None and wanted.isdigit():
        current = info.get("version")
        return isinstance(current, int) and current >= int(wanted), f"version {current}"
    current = info.get("config_version")
    return wanted is None or str(current) == wanted, f"config version {current}"


def laggards(data: Any, shard: str | None, wanted: str | None) -> tuple[bool, list[str]]:
    """Whether the wait is over, and what is still behind (one line each)."""
    behind: list[str] = []
    shards = data.get("shards", {})
    for name, info in sorted(shards.items()):
        if shard is not None and name != shard:
            continue
        reached, where = _reached(wanted, info)
        if not reached:
            behind.append(f"shard {name} is at {where}, not {wanted}")
    for n in data.get("nodes", []):
        if shard is not None and n.get("shard") != shard:
            continue
        if not n.get("in_sync"):
            states = ", ".join(
                f"{t} {s['state']}" + (f" ({s['nack']})" if s["state"] == "NACKED" and s.get("nack") else "")
                for t, s in n.get("types", {}).items() if s["state"] in ("STALE", "NACKED")
            )  # fmt: skip
            behind.append(f"{n.get('shard')}/{n.get('node')} ({n.get('protocol')}): {states}")
    return not behind, behind


def cmd_status(args: argparse.Namespace, client: Client) -> int:
    if args.json:
        args.output = "json"
    query = {"shard": args.shard}
    if args.wait is None:
        emit(args, client.get("/v1/status", **query), _render_status)
        return 0
    wanted = None if args.wait == "current" else args.wait
    if wanted is not None and not args.shard:
        raise ClientError("--wait VERSION needs --shard: versions are per shard")
    if args.shard and args.shard not in client.get("/v1/status", **query).get("shards", {}):
        raise ClientError(f"no shard {args.shard!r} on {client.target.server}")
    deadline = time.monotonic() + args.timeout
    # Each look costs the server some 50 µs per node: look often at first, then less.
    pause = 0.05
    while True:
        data = client.get("/v1/status", **query)
        done, behind = laggards(data, args.shard, wanted)
        if done:
            emit(args, data, _render_status)
            return 0
        if time.monotonic() >= deadline:
            what = f"version {wanted}" if wanted else "the current config"
            where = f"shard {args.shard}" if args.shard else "every shard"
            print(f"dgw status: not every node of {where} took {what} within {args.timeout:g} s:",
                  file=sys.stderr)  # fmt: skip
            for line in behind:
                print(f"  {line}", file=sys.stderr)
            return 1
        time.sleep(min(pause, max(0.0, deadline - time.monotonic())))
        pause = min(pause * 2, 1.0)


# --- tokens and audit -----------------------------------------------------------------


_TTL = re.compile(r"(\d+(?:\.\d+)?)([smhd]?)")


def parse_ttl(text: str) -> float:
    """``90``, ``90s``, ``15m``, ``12h``, ``30d`` → seconds."""
    m = _TTL.fullmatch(text.strip())
    if not m or float(m.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration: write e.g. 90s, 15m, 12h or 30d")
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]


def cmd_token(args: argparse.Namespace, client: Client) -> int:
    if args.token_command == "create":
        body: dict[str, Any] = {"role": args.role, "name": args.name}
        if args.one_time is not None:
            body["one_time"] = args.one_time
        if args.shard:
            body["shard"] = args.shard
        if args.identity:
            body["identity"] = args.identity
        if args.ttl is not None:
            body["ttl_s"] = args.ttl
        data = client.request("POST", "/v1/tokens", body).body
        if args.output == "table":
            print(data["token"])
            print(f"token {data['id']} ({data['role']} {data['name']!r}) made; it is shown only "
                  "this once: keep it secret", file=sys.stderr)  # fmt: skip
        else:
            emit(args, data, str)
        return 0
    if args.token_command == "list":
        data = client.get("/v1/tokens")
        emit(args, data, lambda d: table(
            ["ID", "NAME", "ROLE", "SHARD", "CREATED", "EXPIRES", "ONE-TIME", "STATE"],
            [[t["id"], t["name"], t["role"], t.get("shard") or "", _short_time(t["created_at"]),
              _short_time(t.get("expires_at")) or "never", "yes" if t["one_time"] else "",
              "revoked" if t["revoked"] else "used" if t.get("used_at") else "active"]
             for t in d.get("tokens", [])],
        ))  # fmt: skip
        return 0
    data = client.request("DELETE", f"/v1/tokens/{_path(args.id)}").body
    emit(args, data, lambda d: f"token {d['id']} revoked")
    return 0


def cmd_audit(args: argparse.Namespace, client: Client) -> int:
    data = client.get("/v1/audit", shard=args.shard, limit=args.limit)
    emit(args, data, lambda d: table(
        ["ID", "TIME", "ACTOR", "ACTION", "SHARD", "BASE", "NEW", "OUTCOME"],
        [[e["id"], _short_time(e["at"]), e["actor"], e["action"], e.get("shard") or "",
          e.get("base_version"), e.get("new_version"),
          "accepted" if e["accepted"] else f"refused {e.get('reason', '')}"[:70]]
         for e in d.get("entries", [])],
    ))  # fmt: skip
    return 0


# --- wiring into the parser -------------------------------------------------------------


# The API speaks HTTP; a user of the CLI reads its flags (the server's advice, reworded).
_CLI_WORDS = (
    (re.compile(r"\?force=true"), "--force"),
    (re.compile(r"\?dry_run=true"), "--dry-run"),
    (re.compile(r'send it as If-Match: "(\d+)"'), r"give --force-version \1"),
)


def in_cli_words(message: str) -> str:
    """The server's message with its HTTP advice said as the CLI's flags."""
    for pattern, words in _CLI_WORDS:
        message = pattern.sub(words, message)
    return message


def _run(command: Command) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        try:
            target = resolve(args.dgw_server, args.dgw_token, args.dgw_context)
            if args.verbose:
                print(target.describe(), file=sys.stderr)
            return command(args, Client(target, timeout=args.request_timeout))
        except ClientError as e:
            print(f"dgw {args.command}: {printable(in_cli_words(str(e)), keep=chr(10))}", file=sys.stderr)
            return 1
        except (KeyError, TypeError, AttributeError) as e:
            # A server (or proxy) that does not answer as the API says: no traceback either.
            print(f"dgw {args.command}: the server's answer lacks what dgw expects ({e!r}); "
                  "is --server a dgw server of the same version?", file=sys.stderr)  # fmt: skip
            return 1

    return run


def _client_options(p: argparse.ArgumentParser) -> None:
    """--server, --token, --context and -o are global options (dgw/parser.py)."""
    p.add_argument("--request-timeout", type=float, default=30.0, help=argparse.SUPPRESS)


# For the other command modules that talk to the admin API (dgw/*_cli.py).
api_command = _run
api_client_options = _client_options
path_segment = _path


def _versioned(p: argparse.ArgumentParser) -> None:
    p.add_argument("--force-version", type=int, metavar="N",
                   help="the base version to send as If-Match (default: the one a GET returns now)")  # fmt: skip
    p.add_argument("-m", "--message", help="why, for the history")


def add_commands(sub: Any) -> None:
    p = sub.add_parser("get", help="list shards, or show one (dgw get shards | dgw get shard S)")
    p.add_argument("what", choices=["shards", "shard"])
    p.add_argument("name", nargs="?")
    _client_options(p)
    p.set_defaults(func=_run(cmd_get))

    for name, func, text in (
        ("apply", cmd_apply, "store a shard file as the shard's next version"),
        ("diff", cmd_diff, "what applying a shard file would change (a dry run)"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("-f", "--file", required=True,
                       help="the shard file ('-': stdin), or a directory of SHARD.yaml files sent "
                            "as one batch (all stored or none)")
        p.add_argument("--shard", help="the shard a single file is for")
        if name == "apply":
            p.add_argument("--dry-run", action="store_true", help="show the change, store nothing")
        _versioned(p)
        _client_options(p)
        p.set_defaults(func=_run(func))

    p = sub.add_parser("wiring", help="shadow, split, promote or clear a DAL's wiring")
    p.add_argument("op", choices=["shadow", "split", "promote", "clear"])
    p.add_argument("--shard", required=True)
    p.add_argument("--source", help="the DAL whose traffic is shadowed or split")
    p.add_argument("--target", help="the DAL that receives it (promote: becomes the primary)")
    p.add_argument("--percent", type=int, help="split: the share sent to --target; shadow: optional")
    p.add_argument("--dry-run", action="store_true", help="show the change, store nothing")
    _versioned(p)
    _client_options(p)
    p.set_defaults(func=_run(cmd_wiring))

    p = sub.add_parser("history", help="a shard's versions, newest first")
    p.add_argument("shard")
    p.add_argument("--limit", type=int, default=20)
    p.add_argument("--before", type=int, help="versions older than this one")
    _client_options(p)
    p.set_defaults(func=_run(cmd_history))

    p = sub.add_parser("rollback", help="store an earlier version as the shard's next one")
    p.add_argument("shard")
    p.add_argument("--to", type=int, required=True, metavar="N")
    p.add_argument("--dry-run", action="store_true", help="show the change, store nothing")
    _versioned(p)
    _client_options(p)
    p.set_defaults(func=_run(cmd_rollback))

    p = sub.add_parser("delete", help="delete a shard (dgw delete shard S); its history stays")
    p.add_argument("what", choices=["shard"])
    p.add_argument("name")
    p.add_argument("--force", action="store_true", help="even while Envoys of the shard are connected")
    _versioned(p)
    _client_options(p)
    p.set_defaults(func=_run(cmd_delete))

    p = sub.add_parser("status", help="every connected Envoy: SYNCED / STALE / NACKED per xDS type")
    p.add_argument("--shard")
    p.add_argument("--json", action="store_true", help="same as -o json")
    p.add_argument("--wait", nargs="?", const="current", metavar="VERSION",
                   help="return once every connected node of the shard ACKed VERSION "
                        "(default: the current config); fail listing the laggards after --timeout")  # fmt: skip
    p.add_argument("--timeout", type=float, default=60.0, help="for --wait, seconds (default: %(default)s)")
    _client_options(p)
    p.set_defaults(func=_run(cmd_status))

    p = sub.add_parser("token", help="create, list or revoke API tokens (admin)")
    tsub = p.add_subparsers(dest="token_command", required=True, metavar="create|list|revoke")
    c = tsub.add_parser("create", help="make a token; it is printed once")
    c.add_argument("--role", required=True, choices=["reader", "operator", "admin", "node", "client"],
                   help="node: a gateway host's join token for --shard; client: an application's "
                        "join token for --identity (dgw client-proxy --join)")
    c.add_argument("--name", required=True, help="who or what it is for (shown in the audit log)")
    c.add_argument("--shard", help="a node token's shard")
    c.add_argument("--identity", metavar="ACCOUNT-APP", help="a client token's consumer, as in deploy_desires")
    c.add_argument("--ttl", type=parse_ttl, help="expires after this long: 90s, 15m, 12h, 30d "
                   "(node and client tokens: 1h unless given; others never expire unless given)")
    once = c.add_mutually_exclusive_group()
    once.add_argument("--one-time", dest="one_time", action="store_true", default=None,
                      help="spent by its first use (the default for node and client tokens)")
    once.add_argument("--reusable", dest="one_time", action="store_false",
                      help="a node or client token that may be used more than once (until --ttl)")
    _client_options(c)
    c = tsub.add_parser("list", help="every token (never the secret)")
    _client_options(c)
    c = tsub.add_parser("revoke", help="revoke a token by id")
    c.add_argument("id")
    _client_options(c)
    p.set_defaults(func=_run(cmd_token))

    p = sub.add_parser("audit", help="the audit log: every mutation and refusal (admin)")
    p.add_argument("--shard")
    p.add_argument("--limit", type=int, default=50)
    _client_options(p)
    p.set_defaults(func=_run(cmd_audit))
