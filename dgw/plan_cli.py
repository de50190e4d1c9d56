"""``dgw plan FILE|SHARD``: the capacity plan of deploy desires, from Netflix's planner.

The server computes plans (in a worker process, cached by the desires' key): a FILE
(a shard file or a deploy desires file) is posted to it, a SHARD's stored desires are
planned there. ``--compare`` shows an edited file's plan beside the stored shard's.
While a plan is being computed the server answers 202 and this command asks again.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

from dgw.client import Client, ClientError
from dgw.ops import _client_options, _run, emit, table

_POLL_S = 0.1


def _ask(client: Client, args: argparse.Namespace, target: str | None = None, file: str | None = None) -> Any:
    deadline = time.monotonic() + args.timeout
    query = {"simulations": args.simulations} if args.simulations else None
    while True:
        if file is not None:
            body = {"yaml": Path(file).read_text(), "file": file}
            response = client.request("POST", "/v1/plans", body, query=query)
        else:
            response = client.request("GET", f"/v1/shards/{quote(target or '', safe='')}/plan", query=query)
        if response.status != 202:
            return response.body
        if time.monotonic() >= deadline:
            raise ClientError(f"the plan was not ready within {args.timeout:g} s (--timeout); it is still being "
                              "computed: ask again")  # fmt: skip
        time.sleep(_POLL_S)


def _money(value: float) -> str:
    return f"${value:,.0f}"


def render(data: Any) -> str:
    plan = data["plan"]
    lines = [f"plan for {data.get('shard') or 'the file'}: {plan['model']}, tier {plan['tier']}; {plan['method']}"]
    rows = []
    for loc in plan["locations"]:
        first = True
        for c in loc["clusters"]:
            rows.append([loc["location"] if first else "", loc["region"] if first else "", c["cluster"], c["scope"],
                         c["instance"], c["count"], _money(c["annual_cost"])])  # fmt: skip
            first = False
        rows.append(["", "", "(total)", "", "", "", _money(loc["annual_cost"])])
    lines.append(table(["LOCATION", "REGION", "CLUSTER", "SCOPE", "INSTANCE", "COUNT", "ANNUAL COST"], rows))
    lines.append(f"total annual cost: {_money(plan['total_annual_cost'])}")
    priced = sorted({loc["region"] for loc in plan["locations"] if loc["priced_as"] != loc["region"]})
    if priced:
        lines.append(f"priced as {plan['catalog_regions'][0]} (the planner's catalog has no {', '.join(priced)})")
    lines.append("requirement met: " + "; ".join(
        f"{r['type']} ({r['scope']}): {r['cpu_cores']:g} cores, {r['mem_gib']:g} GiB memory, "
        f"{r['network_mbps']:g} Mbps, {r['disk_gib']:g} GiB disk" for r in plan["requirements"]))
    return "\n".join(lines)


def render_compare(stored: Any, edited: Any) -> str:
    old, new = stored["plan"], edited["plan"]
    before = {loc["location"]: loc for loc in old["locations"]}
    rows = []
    for loc in new["locations"]:
        was = before.get(loc["location"], {"clusters": [], "annual_cost": 0.0})
        shapes = {(c["cluster"], c["scope"]): c for c in was["clusters"]}
        for c in loc["clusters"]:
            o = shapes.get((c["cluster"], c["scope"]))
            rows.append([loc["location"], c["cluster"], c["scope"],
                         f"{o['count']} × {o['instance']}" if o else "-", f"{c['count']} × {c['instance']}"])  # fmt: skip
        rows.append([loc["location"], "(total)", "", _money(was["annual_cost"]), _money(loc["annual_cost"])])
    delta = new["total_annual_cost"] - old["total_annual_cost"]
    return "\n".join([
        f"plan of {edited.get('file') or 'the file'} beside stored shard {stored.get('shard')} ({new['method']})",
        table(["LOCATION", "CLUSTER", "SCOPE", "STORED", "EDITED"], rows),
        f"total annual cost: {_money(old['total_annual_cost'])} → {_money(new['total_annual_cost'])} "
        f"({'+' if delta >= 0 else '-'}{_money(abs(delta))})",
    ])


def cmd_plan(args: argparse.Namespace, client: Client) -> int:
    is_file = Path(args.target).is_file()
    if args.compare is not None:
        if not is_file:
            raise ClientError(f"--compare needs a FILE (an edited shard file), and {args.target!r} is not one")
        shard = args.compare or Path(args.target).stem
        stored, edited = _ask(client, args, target=shard), _ask(client, args, file=args.target)
        edited["file"] = args.target
        emit(args, {"stored": stored, "edited": edited}, lambda d: render_compare(d["stored"], d["edited"]))
        return 0
    data = _ask(client, args, file=args.target) if is_file else _ask(client, args, target=args.target)
    emit(args, data, render)
    return 0


def add_command(sub: Any) -> None:
    p = sub.add_parser("plan", help="the capacity plan of a shard's deploy desires (Netflix's planner)")
    p.add_argument("target", metavar="FILE|SHARD", help="a shard file or deploy desires file, or a stored shard")
    p.add_argument("--compare", nargs="?", const="", metavar="SHARD",
                   help="show FILE's plan beside the stored shard's (default: the shard named like the file)")
    p.add_argument("--simulations", type=int, default=0,
                   help="0 (default): least cost at the mid values; N: least regret over N simulated worlds "
                        "between low and high (about a second each)")  # fmt: skip
    p.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for a plan being computed")
    _client_options(p)
    p.set_defaults(func=_run(cmd_plan))
