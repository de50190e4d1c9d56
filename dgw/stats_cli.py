"""``dgw stats SHARD``: what a shard's traffic did lately, from its Envoys' own stats
(``GET /v1/stats/{shard}``): per DAL listener and per HTTP listener, requests per
second, 5xx, p50 and p99, and what the resilience policies did: requests shed (local
rate limit, circuit breakers, adaptive concurrency, admission control, overload
manager), retries (and those the budget refused), ejections; the shard's totals by reason."""

from __future__ import annotations

import argparse
from typing import Any
from urllib.parse import quote

from dgw.client import Client
from dgw.ops import _client_options, _run, emit, table


def _ms(value: Any) -> str:
    return "-" if value is None else f"{value:.2f}"


def _resilience(t: dict[str, Any]) -> list[Any]:
    r = t.get("resilience") or {}
    shed, retried, ejected = r.get("shed", {}), r.get("retried", {}), r.get("ejected", {})
    return [shed.get("requests", 0), retried.get("retries", 0), retried.get("refused_by_budget", 0),
            ejected.get("ejections", 0), ejected.get("ejected_now", 0)]  # fmt: skip


def render(data: dict[str, Any]) -> str:
    header = (f"shard {data['shard']}: the last {data['window_s']:g} s "
              f"(samples span {data['measured_s']:g} s) of {data['nodes']} node(s)")  # fmt: skip
    rows = []
    for kind, entries in (("cluster", data["clusters"]), ("listener", data["listeners"]),
                          ("route", data.get("routes", {}))):  # fmt: skip
        for name, t in sorted(entries.items()):
            rows.append([kind, name, t["requests"], f"{t['rps']:.1f}", t["errors"],
                         f"{100 * t['error_rate']:.2f}%", _ms(t["p50_ms"]), _ms(t["p99_ms"]),
                         *_resilience(t)])  # fmt: skip
    text = header + "\n" + table(
        ["KIND", "NAME", "REQUESTS", "RPS", "5XX", "ERRORS", "P50 MS", "P99 MS", "SHED", "RETRIES",
         "RETRIES REFUSED", "EJECTIONS", "EJECTED NOW"], rows,
    )  # fmt: skip
    totals = data.get("resilience") or {}
    done = [(f"{group} {reason}", n) for group, reasons in totals.items() for reason, n in reasons.items() if n]
    if done:
        text += "\n\n" + table(["RESILIENCE (SHARD)", "COUNT"], done)
    shed = {k: v for k, v in data["other"].items() if v}
    if shed:
        text += "\n\n" + table(["OTHER COUNTER", "INCREASE"], sorted(shed.items()))
    return text


def cmd_stats(args: argparse.Namespace, client: Client) -> int:
    query = {"window": args.window, "node": args.node}
    emit(args, client.get(f"/v1/stats/{quote(args.shard, safe='')}", **query), render)
    return 0


def add_command(sub: Any) -> None:
    p = sub.add_parser("stats", help="a shard's recent traffic from its Envoys' stats: rps, 5xx, p50/p99")
    p.add_argument("shard")
    p.add_argument("--window", default="30s", help="how far back: 30s (default), 2m ...")
    p.add_argument("--node", help="one node's traffic only")
    _client_options(p)
    p.set_defaults(func=_run(cmd_stats))
