"""``dgw node``: revoke a gateway host, list the revoked ones, reinstate one (admin).

``dgw node revoke N [--shard S] [--reason TEXT]``: the server ends the node's streams at
once and refuses its renewals, reports and joins (docs/security.md). Without
``--shard``, the shard is the one the node is connected to or reported for.
"""

from __future__ import annotations

import argparse
from typing import Any

from dgw.client import Client, ClientError
from dgw.ops import api_client_options, api_command, emit, path_segment, table


def _shard_of(client: Client, node: str) -> str:
    """The one shard a node id is connected to or reported for."""
    nodes = client.get("/v1/nodes").get("nodes", [])
    shards = sorted({n.get("shard") for n in nodes if n.get("node_id", n.get("node")) == node} - {None})
    if len(shards) == 1:
        return str(shards[0])
    if not shards:
        raise ClientError(f"node {node!r} is not connected: name its shard with --shard")
    raise ClientError(f"node {node!r} is in shards {', '.join(shards)}: name one with --shard")


def cmd_node(args: argparse.Namespace, client: Client) -> int:
    if args.node_command == "revocations":
        data = client.get("/v1/revocations")
        emit(args, data, lambda d: table(
            ["SHARD", "NODE", "REVOKED", "BY", "REASON"],
            [[r["shard"], r["node"], str(r["at"])[:19].replace("T", " "), r["by"], r.get("reason", "")]
             for r in d.get("revocations", [])],
        ) if d.get("revocations") else "no node is revoked")  # fmt: skip
        return 0
    shard = args.shard or _shard_of(client, args.node)
    path = f"/v1/revocations/{path_segment(shard)}/{path_segment(args.node)}"
    if args.node_command == "revoke":
        body: dict[str, Any] = {"reason": args.reason} if args.reason else {}
        data = client.request("PUT", path, body).body
        emit(args, data, lambda d: f"node {shard}/{args.node} revoked: its streams are ended and it can no "
                                   "longer renew, report or join" + ("" if d.get("new") else " (it already was)"))
        return 0
    data = client.request("DELETE", path).body
    emit(args, data, lambda d: f"node {shard}/{args.node} reinstated: it joins again with a new join token "
                               f"(dgw token create --role node --shard {shard})")
    return 0


def add_command(sub: Any) -> None:
    p = sub.add_parser("node", help="revoke a gateway host, list revoked ones, reinstate one (admin)")
    nsub = p.add_subparsers(dest="node_command", required=True, metavar="revoke|revocations|reinstate")
    for name, text in (("revoke", "end a node's streams and refuse its renewals, reports and joins"),
                       ("reinstate", "let a revoked node join again (with a new join token)")):  # fmt: skip
        c = nsub.add_parser(name, help=text)
        c.add_argument("node", help="the node id")
        c.add_argument("--shard", help="its shard (default: the one it is connected to)")
        if name == "revoke":
            c.add_argument("--reason", help="why, for the record")
        api_client_options(c)
    c = nsub.add_parser("revocations", help="every revoked node")
    api_client_options(c)
    p.set_defaults(func=api_command(cmd_node))
