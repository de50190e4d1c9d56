"""The KV DAL's command line: run it, check it, and call it.

    python -m dals.kv serve                       the DAL (config in KV_CONFIG, see config.py)
    python -m dals.kv health URL                  exit 0 if URL answers 2xx (container health checks)
    python -m dals.kv [--target HOST:PORT] [--tls DIR --server-name NAME] COMMAND ...
        put NS ID KEY=VALUE... (KEY=@FILE reads the value from a file)
        get NS ID [KEY...] [--start K] [--end K] [--with-write-times] [-o text|json]
        delete NS ID [KEY...] [--start K] [--end K]   (no keys and no range: the whole record)
        scan NS [--cursor C] [--with-write-times] [-o text|json]

Keys and values are UTF-8 text on the command line (``-o json`` shows bytes as base64).
``--tls DIR`` is what ``dgw ca issue --out DIR`` wrote: the call goes over mTLS, as a
consumer of the gateway's secured listener; without it, plaintext (a local DAL, or
``dgw client-proxy`` holding the mTLS). ``health`` and ``serve`` load no gRPC client,
so a health check every second stays cheap.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import logging
import os
import sys
import urllib.request
from pathlib import Path
from typing import Any

DEFAULT_TARGET = "127.0.0.1:8980"
# gRPC core's event engine moves a server's socket work to threads of its own, one more
# hand-off per event on the way to grpc.aio's poller thread and the event loop: without
# it the DAL spent 8-9 % less CPU per call (bench/README.md, kv-cpu). An experiment gRPC no
# longer knows is logged once at start and ignored.
GRPC_EXPERIMENTS = "-event_engine_listener,-event_engine_for_all_other_endpoints,-event_engine_client,-event_engine_callback_cq"


def _health(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return 0 if 200 <= response.status < 300 else 1
    except OSError as e:
        print(f"unhealthy: {e}", file=sys.stderr)
        return 1


def _serve() -> int:
    os.environ.setdefault("GRPC_EXPERIMENTS", GRPC_EXPERIMENTS)  # read when gRPC's core starts
    import uvloop

    from .server import ServeError, serve

    logging.basicConfig(level=os.environ.get("KV_LOG_LEVEL", "INFO").upper(),
                        format="%(asctime)s %(name)s %(message)s")  # fmt: skip
    try:
        uvloop.run(serve(dict(os.environ)))
    except ServeError as e:
        print(f"dals.kv: {e}", file=sys.stderr)
        return 1
    return 0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m dals.kv", description="Call the Key-Value DAL (dgw.kv.v1) over gRPC.",
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)  # fmt: skip
    p.add_argument("--target", default=os.environ.get("KV_TARGET", DEFAULT_TARGET),
                   help="HOST:PORT of the gateway listener or the DAL (default: $KV_TARGET or %(default)s)")
    p.add_argument("--tls", type=Path, help="mTLS with DIR/cert.pem, key.pem, bundle.pem (from dgw ca issue --out DIR)")
    p.add_argument("--server-name", help="the name the server's certificate carries, e.g. demo.gateway.dgw.local")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds per call (default: %(default)s)")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="run the DAL on the listeners in DGW_LISTENER_<NAME>_PORT")
    h = sub.add_parser("health", help="exit 0 if URL answers 2xx")
    h.add_argument("url")
    put = sub.add_parser("put", help="set items of a record")
    put.add_argument("namespace")
    put.add_argument("id")
    put.add_argument("items", nargs="+", metavar="KEY=VALUE")
    for name in ("get", "delete"):
        c = sub.add_parser(name, help=f"{name} items of a record (all, some keys, or a range)")
        c.add_argument("namespace")
        c.add_argument("id")
        c.add_argument("keys", nargs="*", metavar="KEY")
        c.add_argument("--start", help="first key of a range")
        c.add_argument("--end", help="the key after the range's last")
        if name == "get":
            c.add_argument("--with-write-times", action="store_true")
            c.add_argument("-o", "--output", choices=["text", "json"], default="text")
    scan = sub.add_parser("scan", help="every record of a namespace")
    scan.add_argument("namespace")
    scan.add_argument("--cursor", default="", help="resume from a cursor a scan printed")
    scan.add_argument("--with-write-times", action="store_true")
    scan.add_argument("-o", "--output", choices=["text", "json"], default="text")
    return p


def _items(specs: list[str]) -> list[tuple[bytes, bytes]]:
    out = []
    for spec in specs:
        key, sep, value = spec.partition("=")
        if not sep or not key:
            raise SystemExit(f"python -m dals.kv put: {spec!r} is not KEY=VALUE")
        out.append((key.encode(), Path(value[1:]).read_bytes() if value.startswith("@") else value.encode()))
    return out


def _text(data: bytes) -> str:
    return data.decode("utf-8", "backslashreplace")


def _show(rows: list[tuple[str, Any]], output: str, with_times: bool) -> None:
    from .client import ItemRead

    for record_id, item in rows:
        assert isinstance(item, ItemRead)
        if output == "json":
            body: dict[str, Any] = {"id": record_id, "key": base64.b64encode(item.key).decode(),
                                    "value": base64.b64encode(item.value).decode()}  # fmt: skip
            if with_times:
                body |= {"write_time_us": item.write_time_us, "writer_id": item.writer_id.hex()}
            print(json.dumps(body))
        else:
            when = f"  (written {item.write_time_us} by {item.writer_id.hex()})" if with_times else ""
            print(f"{record_id}  {_text(item.key)} = {_text(item.value)}{when}")


async def _call(args: argparse.Namespace) -> int:
    from .client import KvCallError, KvClient, TlsFiles

    tls = TlsFiles.from_dir(args.tls) if args.tls else None
    async with KvClient.connect(args.target, tls=tls, server_name=args.server_name, timeout_s=args.timeout) as client:
        try:
            if args.command == "put":
                applied = await client.put(args.namespace, args.id, _items(args.items))
                print(f"applied {applied}")
            elif args.command == "get":
                keys = [k.encode() for k in args.keys] or None
                items = await client.get(args.namespace, args.id, keys, _opt(args.start), _opt(args.end),
                                         with_write_times=args.with_write_times)  # fmt: skip
                _show([(args.id, i) for i in items], args.output, args.with_write_times)
            elif args.command == "delete":
                keys = [k.encode() for k in args.keys] or None
                print(f"applied {await client.delete(args.namespace, args.id, keys, _opt(args.start), _opt(args.end))}")
            else:
                cursor = base64.urlsafe_b64decode(args.cursor) if args.cursor else b""
                async for batch in client.scan(args.namespace, cursor, with_write_times=args.with_write_times):
                    _show(batch.items, args.output, args.with_write_times)
                    if batch.cursor:
                        print(f"# cursor {base64.urlsafe_b64encode(batch.cursor).decode()}", file=sys.stderr)
        except KvCallError as e:
            print(f"python -m dals.kv {args.command}: {e}", file=sys.stderr)
            return 1
    return 0


def _opt(text: str | None) -> bytes | None:
    return None if text is None else text.encode()


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    if args.command == "serve":
        return _serve()
    if args.command == "health":
        return _health(args.url)
    try:
        return asyncio.run(_call(args))
    except (OSError, ValueError) as e:
        print(f"python -m dals.kv {args.command}: {e}", file=sys.stderr)
        return 1
