"""``dgw migrate SHARD start|backfill|verify|throttle|promote|rollback|finish|status``.

Every step is a call of the admin API (``/v1/migrations/{shard}``): the server checks
its order and answers a refusal as one line. ``backfill`` and ``verify`` run HERE, in
this process (``dgw.migrate.backfill`` / ``verify``), speaking the DALs' migration
contract to the gRPC endpoints the server lists for both DALs (from the gateway
hosts' reports; ``--source``/``--target`` to choose others), with their state in the
server's store (``ApiState``): killed at any moment, ``backfill`` again resumes from
the last checkpoint, on any host.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import signal
import sys
import time
from typing import Any
from urllib.parse import quote

from dgw.client import Client, ClientError
from dgw.ops import api_client_options, api_command, emit, table
from dgw.rollout_cli import _seconds

from .api_state import ApiState
from .state import StateLost

_REFRESH_S = 0.5


def _path(args: argparse.Namespace, step: str = "") -> str:
    return f"/v1/migrations/{quote(args.shard, safe='')}" + (f"/{step}" if step else "")


def _when(epoch: Any) -> str:
    return dt.datetime.fromtimestamp(epoch).strftime("%H:%M:%S") if epoch else ""


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else \
        f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"  # fmt: skip


def render(m: dict[str, Any]) -> str:
    """``dgw migrate SHARD status`` for people."""
    phase = m["phase"]
    p = m.get("promotion")
    if phase == "promoting" and p:
        phase += f" (step {p['index'] + 1} of {len(p['steps'])}: {p['steps'][p['index']]:g}% of reads to {m['to']})"
    lines = [f"migration of shard {m['shard']}: {m['from']} → {m['to']} ({m.get('api') or '?'}), {phase}",
             f"started by {m['started_by']} at {_when(m['started_at'])}; version {m['version']}"]  # fmt: skip
    progress = m.get("progress")
    if progress:
        line = f"backfill: {int(progress['items'])} items, {int(progress['bytes'])} bytes, " \
               f"{progress['items_per_s']:g} items/s"  # fmt: skip
        if "percent" in progress:
            line += f", {progress['percent']:g}%" + ("" if progress["done"] else f", ETA {_duration(progress.get('eta_s'))}")
        line += " (done)" if progress["done"] else ""
        lease = (m.get("backfill") or {}).get("lease")
        if lease and not progress["done"]:
            line += f"; runner {lease.get('runner')}"
        lines.append(line)
    if m.get("throttle"):
        lines.append("throttle: " + ", ".join(f"{k} {v:g}" for k, v in sorted(m["throttle"].items()) if v))
    verify = m.get("verify") or {}
    if verify:
        found = verify.get("found") or []
        lines.append(f"verify: {m.get('differences')} differences left"
                     + (f" of {verify.get('differences')} found, {verify.get('fixed', 0)} fixed" if found else ""))  # fmt: skip
        for d in found[:10]:
            lines.append(f"  {d.get('namespace')}/{d.get('id')}/{d.get('key')}: {d.get('kind')}"
                         + (" (fixed)" if d.get("fixed") else ""))  # fmt: skip
        if len(found) > 10:
            lines.append(f"  ... {len(found) - 10} more (-o json lists them)")
    if p:
        for verdict in p.get("verdicts") or []:
            lines.append(f"  {verdict}")
    if m.get("halted"):
        lines.append(f"halted: {m['halted']}")
    endpoints = m.get("endpoints") or {}
    lines.append(f"endpoints: {m['from']} {', '.join(endpoints.get('from') or ['none reported'])}; "
                 f"{m['to']} {', '.join(endpoints.get('to') or ['none reported'])}")  # fmt: skip
    rows = [[_when(h["at"]), h["phase"], h.get("version") or "", h["by"], h["what"]] for h in m.get("history", [])[-8:]]
    lines.append(table(["AT", "PHASE", "CONFIG", "BY", "WHAT"], rows))
    lines.append(m["next"])
    return "\n".join(lines)


def _post(args: argparse.Namespace, client: Client, step: str, body: dict[str, Any] | None = None) -> int:
    emit(args, client.request("POST", _path(args, step), body).body, render)
    return 0


def cmd_status(args: argparse.Namespace, client: Client) -> int:
    emit(args, client.get(_path(args)), render)
    return 0


def cmd_start(args: argparse.Namespace, client: Client) -> int:
    return _post(args, client, "start", {"from": args.source, "to": args.target})


def cmd_throttle(args: argparse.Namespace, client: Client) -> int:
    body = {k: v for k, v in (("items_per_s", args.items_per_s), ("bytes_per_s", args.bytes_per_s)) if v is not None}
    if not body:
        raise ClientError("give --items-per-s, --bytes-per-s or both")
    return _post(args, client, "throttle", body)


def cmd_promote(args: argparse.Namespace, client: Client) -> int:
    body: dict[str, Any] = {}
    if args.steps is not None:  # --steps "" is a mistake, not a promotion at once
        try:
            body["steps"] = [float(s) for s in args.steps.split(",")]
        except ValueError:
            given = args.steps or "''"
            raise ClientError(f"--steps {given}: percents separated by commas, e.g. 1,10,50,100") from None
        body["interval_s"] = args.interval
    elif args.interval is not None:
        raise ClientError("--interval goes with --steps (a progressive promotion)")
    if args.max_error_increase is not None:
        if not 0 <= args.max_error_increase <= 100:
            raise ClientError(f"--max-error-increase {args.max_error_increase:g}: percentage points from 0 to 100")
        body["max_error_rate_increase"] = args.max_error_increase / 100
    if args.max_p99_ratio is not None:
        body["max_p99_ratio"] = args.max_p99_ratio
    m = client.request("POST", _path(args, "promote"), body).body
    if not args.wait or m["phase"] != "promoting":
        emit(args, m, render)
        return 0
    while m["phase"] == "promoting":
        time.sleep(_REFRESH_S)
        m = client.get(_path(args))
    emit(args, m, render)
    return 0 if m["phase"] == "promoted" else 1


def cmd_rollback(args: argparse.Namespace, client: Client) -> int:
    return _post(args, client, "rollback", {"abandon": True} if args.abandon else {})


def cmd_finish(args: argparse.Namespace, client: Client) -> int:
    return _post(args, client, "finish")


def _endpoints(args: argparse.Namespace, m: dict[str, Any]) -> tuple[str, str]:
    """The DALs' gRPC endpoints the runner speaks to: given, or the first each DAL's
    hosts report."""
    listed = m.get("endpoints") or {}
    source = args.source_endpoint or next(iter(listed.get("from") or []), None)
    target = args.target_endpoint or next(iter(listed.get("to") or []), None)
    for role, value, flag in (("from", source, "--source"), ("to", target, "--target")):
        if not value:
            raise ClientError(f"no host reports a gRPC endpoint of DAL {m[role]!r}: is a gateway of shard "
                              f"{m['shard']} up? (or give {flag} HOST:PORT)")  # fmt: skip
    assert source is not None and target is not None
    return source, target


def _may_run(m: dict[str, Any], step: str) -> None:
    """Refused before anything is copied or compared, as the server would refuse the
    step's first checkpoint or report (out of order)."""
    refusal = (m.get("runner_refusals") or {}).get(step)
    if refusal:
        raise ClientError(refusal)


def cmd_backfill(args: argparse.Namespace, client: Client) -> int:
    from .backfill import BackfillOptions, BackfillRefused, BackfillResult, run_backfill
    from .dal_client import DalError

    state = ApiState(client, args.shard)
    m = asyncio.run(state.load())
    _may_run(m, "backfill")
    rate = {k: v for k, v in (("items_per_s", args.items_per_s), ("bytes_per_s", args.bytes_per_s)) if v is not None}
    if rate:
        client.request("POST", _path(args, "throttle"), rate)
    source, target = _endpoints(args, m)
    options = BackfillOptions(namespaces=args.namespace, take_over=args.take_over)

    async def live_p99() -> float | None:
        return await state.live_p99(args.shard)

    async def until_interrupted() -> BackfillResult:
        # Ctrl-C: checkpoint and give the lease up, so that `backfill` again resumes at
        # once; a second Ctrl-C quits at once (the lease then stands until it expires).
        stop, loop = asyncio.Event(), asyncio.get_running_loop()

        def interrupted() -> None:
            print("dgw migrate: stopping at the next page (Ctrl-C again to quit at once)", file=sys.stderr)
            stop.set()
            loop.remove_signal_handler(signal.SIGINT)

        loop.add_signal_handler(signal.SIGINT, interrupted)
        try:
            return await run_backfill(source, target, state, options, live_p99=live_p99, stop=stop)
        finally:
            loop.remove_signal_handler(signal.SIGINT)

    try:
        result = asyncio.run(until_interrupted())
    except (BackfillRefused, StateLost, DalError) as e:
        raise ClientError(f"backfill: {e}") from None
    print(f"backfill of shard {args.shard}: {result.items} items ({result.skipped} already there), "
          f"{result.bytes} bytes in {result.seconds:.1f}s, {result.items_per_s:.0f} items/s"
          + ("; done" if result.done else "; stopped: run it again to resume"), file=sys.stderr)  # fmt: skip
    emit(args, client.get(_path(args)), render)
    return 0 if result.done else 1


def cmd_verify(args: argparse.Namespace, client: Client) -> int:
    from .dal_client import DalError
    from .verify import VerifyOptions, run_verify

    state = ApiState(client, args.shard)
    m = asyncio.run(state.load())
    _may_run(m, "verify")
    source, target = _endpoints(args, m)
    try:
        report = asyncio.run(run_verify(source, target, state, VerifyOptions(namespaces=args.namespace, fix=args.fix)))
    except DalError as e:
        raise ClientError(f"verify: {e}") from None
    m = client.get(_path(args))
    emit(args, m, render)
    return 0 if m["phase"] == "verified" or (report.to_dict().get("differences") == 0) else 1


def add_command(sub: Any) -> None:
    p = sub.add_parser("migrate", help="move a shard's data from one DAL to another: start, backfill, verify, "
                                       "promote, finish (rollback at any step), status")  # fmt: skip
    p.add_argument("shard", metavar="SHARD")
    steps = p.add_subparsers(dest="migrate_command", required=True,
                             metavar="start|backfill|verify|throttle|promote|rollback|finish|status")  # fmt: skip

    def step(name: str, text: str, func: Any) -> argparse.ArgumentParser:
        s: argparse.ArgumentParser = steps.add_parser(name, help=text)
        api_client_options(s)
        s.set_defaults(func=api_command(func))
        return s

    s = step("start", "copy writes to the new DAL (a shadow of writes) and record the migration", cmd_start)
    s.add_argument("--from", dest="source", required=True, metavar="DAL", help="the DAL the data is in")
    s.add_argument("--to", dest="target", required=True, metavar="DAL", help="the DAL it moves to (same API)")
    for name, text, func in (("backfill", "copy every record from the old DAL to the new (runs here; resumable)",
                              cmd_backfill),
                             ("verify", "compare both DALs, range by range, and name each difference", cmd_verify)):
        s = step(name, text, func)
        s.add_argument("--namespace", action="append", help="only this namespace (repeatable; default: all)")
        s.add_argument("--source", dest="source_endpoint", metavar="HOST:PORT",
                       help="the old DAL's gRPC endpoint (default: the first its hosts report)")
        s.add_argument("--target", dest="target_endpoint", metavar="HOST:PORT",
                       help="the new DAL's gRPC endpoint (default: the first its hosts report)")
        if name == "backfill":
            s.add_argument("--items-per-s", type=float, help="set the rate limit first (as throttle)")
            s.add_argument("--bytes-per-s", type=float, help="set the rate limit first (as throttle)")
            s.add_argument("--take-over", action="store_true", help="start even if another runner holds the lease")
        else:
            s.add_argument("--fix", action="store_true", help="re-copy what differs, then report")
    s = step("throttle", "change the backfill's rate limits (it reads them at each checkpoint)", cmd_throttle)
    s.add_argument("--items-per-s", type=float)
    s.add_argument("--bytes-per-s", type=float)
    s = step("promote", "make the new DAL primary, the old its shadow of writes (in steps with --steps)", cmd_promote)
    s.add_argument("--steps", help="percents of reads, e.g. 1,10,50,100: each held --interval and judged")
    s.add_argument("--interval", type=_seconds, help="how long each step is held and judged: 30s, 2m ...")
    s.add_argument("--max-error-increase", type=float, metavar="POINTS",
                   help="the new DAL's error rate at most this many points over the old one's (default 1)")
    s.add_argument("--max-p99-ratio", type=float, help="the new DAL's p99 at most this times the old one's (default 1.5)")
    s.add_argument("--wait", action="store_true", help="follow the steps until promoted or halted (exit 1)")
    s = step("rollback", "back to the state before the current phase", cmd_rollback)
    s.add_argument("--abandon", action="store_true", help="give the migration up: the wiring as before start")
    step("finish", "remove the old DAL and its shadow of writes (after promote)", cmd_finish)
    step("status", "phase, progress, ETA, differences, promotion steps and what to do next", cmd_status)

