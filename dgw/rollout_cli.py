"""``dgw rollout start|status|list|pause|resume|abort``: phased rollouts by tier.

``start -f DIR`` rolls a directory of ``SHARD.yaml`` files out (or ``-f FILE --shard S``
for one); ``start --resolve`` resolves shards' version sets again (after ``dgw artifact
push`` moved a branch: nothing runs a new build before this). Waves go in tier order
(3 first, 0 last), by location within a tier; each is applied, taken by every node,
baked and judged; a failed wave rolls back by itself and the rollout halts.

On a terminal, ``start`` and ``status`` follow the rollout live until it ends
(Ctrl-C leaves it running); ``--no-watch`` prints once.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

from dgw.client import Client, ClientError
from dgw.ops import _client_options, _read_file, _run, emit, table

_FINAL = ("succeeded", "failed", "aborted")
_REFRESH_S = 0.5
_CLEAR = "\x1b[H\x1b[2J"


def _seconds(text: str) -> float:
    from xds_server.config.model import parse_duration

    try:
        return parse_duration(text) if not text.replace(".", "", 1).isdigit() else float(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _when(epoch: Any) -> str:
    return dt.datetime.fromtimestamp(epoch).strftime("%H:%M:%S") if epoch else ""


def render(r: Any) -> str:
    state = r["state"] + (" (paused)" if r.get("paused") and r["state"] == "running" else "")
    o = r["options"]
    lines = [f"rollout {r['id']}: {state}; {len(r['targets'])} shards in {len(r['waves'])} waves; by "
             f"{r['created_by']} at {_when(r['created_at'])}" + (f": {r['message']}" if r["message"] else ""),
             f"bake {o['bake_s']:g} s, taken within {o['sync_timeout_s']:g} s, 5xx at most "
             f"+{100 * o['max_error_rate_increase']:.1f} points over the {o['baseline_s']:g} s before"]  # fmt: skip
    rows = []
    for w in r["waves"]:
        shown = ", ".join(w["shards"][:4]) + (f" (+{len(w['shards']) - 4})" if len(w["shards"]) > 4 else "")
        rows.append([w["index"] + 1, w["tier"], w["location"], shown, w["state"].upper(), _when(w["started_at"]),
                     _when(w["synced_at"]), _when(w["finished_at"])])  # fmt: skip
    lines.append(table(["WAVE", "TIER", "LOCATION", "SHARDS", "STATE", "BEGAN", "TAKEN", "ENDED"], rows))
    live = r.get("live")
    if live:
        lines.append(f"wave {live['wave'] + 1}, nodes by location:" + ("" if live["locations"] else " none connected"))
        for where, g in live["locations"].items():
            lines.append(f"  {where}: {g['taken']}/{g['nodes']} took it" +
                         (f"; behind: {'; '.join(g['behind'])}" if g["behind"] else ""))  # fmt: skip
    for w in r["waves"]:
        if w["verdict"]:
            lines.append(w["verdict"])
    if r.get("outcome"):
        lines.append(f"outcome: {r['outcome']}")
    return "\n".join(lines)


def _follow(args: argparse.Namespace, client: Client, rollout_id: str) -> int:
    """Redraw the rollout until it ends (a terminal's live view); exit 1 if it failed."""
    path = f"/v1/rollouts/{quote(rollout_id, safe='')}"
    data = client.get(path)
    try:
        while data["state"] not in _FINAL:
            sys.stdout.write(_CLEAR + render(data) + "\n(Ctrl-C leaves it running)\n")
            sys.stdout.flush()
            time.sleep(_REFRESH_S)
            data = client.get(path)
    except KeyboardInterrupt:
        print(f"\nrollout {rollout_id} goes on: dgw rollout status {rollout_id}")
        return 0
    sys.stdout.write(_CLEAR + render(data) + "\n")
    return 0 if data["state"] == "succeeded" else 1


def _watching(args: argparse.Namespace) -> bool:
    return args.output == "table" and not args.no_watch and sys.stdout.isatty()


def cmd_start(args: argparse.Namespace, client: Client) -> int:
    body: dict[str, Any] = {"message": args.message or ""}
    if args.file:
        if args.resolve:
            raise ClientError("-f rolls new files out, --resolve re-resolves version sets: one or the other")
        source = Path(args.file)
        if source.is_dir():
            if args.shard:
                raise ClientError(f"-f {source} is a directory: its files name their shards; drop --shard")
            files = sorted(p for p in source.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())
            if not files:
                raise ClientError(f"-f {source}: no SHARD.yaml files in it")
            body["files"] = {f.stem: _read_file(str(f)) for f in files}
        else:
            if not args.shard:
                raise ClientError(f"-f {source} is one shard's file: name it with --shard S")
            body["files"] = {args.shard: _read_file(args.file)}
    elif args.resolve:
        if args.shard:
            body["shards"] = [args.shard, *args.more_shards]
        if args.artifact:
            body["artifacts"] = args.artifact
    else:
        raise ClientError("what to roll out? -f DIR (new shard files) or --resolve (version sets again)")
    for name in ("bake_s", "sync_timeout_s", "baseline_s", "wave_size", "min_requests"):
        if getattr(args, name) is not None:
            body[name] = getattr(args, name)
    if args.max_error_increase is not None:
        body["max_error_rate_increase"] = args.max_error_increase / 100
    data = client.request("POST", "/v1/rollouts", body).body
    if _watching(args):
        return _follow(args, client, data["id"])
    emit(args, data, render)
    return 0


def cmd_status(args: argparse.Namespace, client: Client) -> int:
    rollout_id = args.id
    if rollout_id is None:
        listed = client.get("/v1/rollouts")["rollouts"]
        if not listed:
            raise ClientError("no rollout yet: dgw rollout start")
        rollout_id = listed[0]["id"]
    if _watching(args):
        return _follow(args, client, rollout_id)
    emit(args, client.get(f"/v1/rollouts/{quote(rollout_id, safe='')}"), render)
    return 0


def cmd_list(args: argparse.Namespace, client: Client) -> int:
    emit(args, client.get("/v1/rollouts"), lambda d: table(
        ["ID", "STATE", "KIND", "SHARDS", "WAVES", "PASSED", "CURRENT", "BY", "OUTCOME"],
        [[r["id"], r["state"] + (" (paused)" if r["paused"] and r["state"] == "running" else ""), r["kind"],
          r["shards"], r["waves"], r["passed"], r["current"] or "", r["created_by"], (r["outcome"] or "")[:60]]
         for r in d["rollouts"]]))  # fmt: skip
    return 0


def cmd_change(args: argparse.Namespace, client: Client) -> int:
    data = client.request("POST", f"/v1/rollouts/{quote(args.id, safe='')}/{args.rollout_command}").body
    emit(args, data, render)
    return 0


def add_command(sub: Any) -> None:
    p = sub.add_parser("rollout", help="phased rollouts by tier: start, status, list, pause, resume, abort")
    rsub = p.add_subparsers(dest="rollout_command", required=True, metavar="start|status|list|pause|resume|abort")
    s = rsub.add_parser("start", help="roll new shard files (-f) or re-resolved version sets (--resolve) out in waves")
    s.add_argument("-f", "--file", help="a directory of SHARD.yaml files, or one file with --shard")
    s.add_argument("--resolve", action="store_true",
                   help="resolve version sets again: the shards (default: every one with a version set) run "
                        "the builds their branches and tags name now")  # fmt: skip
    s.add_argument("--shard", help="-f FILE's shard; with --resolve, the first shard to re-resolve")
    s.add_argument("more_shards", nargs="*", metavar="SHARD", help="with --resolve: more shards")
    s.add_argument("--artifact", action="append", help="with --resolve: only this artifact (repeatable)")
    s.add_argument("--bake", dest="bake_s", type=_seconds, help="bake time per wave: 60s (default), 5m ...")
    s.add_argument("--sync-timeout", dest="sync_timeout_s", type=_seconds,
                   help="every node must take a wave within this (default 120s)")
    s.add_argument("--baseline", dest="baseline_s", type=_seconds,
                   help="the traffic before a wave it is judged against (default 60s)")
    s.add_argument("--max-error-increase", type=float, metavar="POINTS",
                   help="5xx rate at most this many percentage points above the baseline (default 1)")
    s.add_argument("--min-requests", type=int, help="fewer requests in a bake judge no error rate (default 20)")
    s.add_argument("--wave-size", type=int, help="shards per wave at most (default: a whole tier-location group)")
    s.add_argument("-m", "--message", help="why, for the history and the audit log")
    s.add_argument("--no-watch", action="store_true", help="return at once instead of following it")
    _client_options(s)
    s.set_defaults(func=_run(cmd_start))
    st = rsub.add_parser("status", help="a rollout's waves and its current wave's nodes (live on a terminal)")
    st.add_argument("id", nargs="?", help="the rollout (default: the newest)")
    st.add_argument("--no-watch", action="store_true", help="print once")
    _client_options(st)
    st.set_defaults(func=_run(cmd_status))
    c = rsub.add_parser("list", help="every rollout, newest first")
    _client_options(c)
    c.set_defaults(func=_run(cmd_list))
    for name, text in (("pause", "hold the next wave back (a wave in flight is still judged)"),
                       ("resume", "go on with the next wave"),
                       ("abort", "roll the wave in flight back and end the rollout")):  # fmt: skip
        c = rsub.add_parser(name, help=text)
        c.add_argument("id")
        _client_options(c)
        c.set_defaults(func=_run(cmd_change))
