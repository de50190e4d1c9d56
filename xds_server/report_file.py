"""Node reports kept on disk, so that a restarted server answers EDS at once.

Restart strategy: after ``kill -9`` and a restart, Envoys reconnect within a second,
while each sidecar reports again only on its next tick (up to 10 s) — or never, if it
is gone. Rather than hold every node's EDS back until its sidecar reports (a wait the
ADS server would have to know about), the server writes every node's last report to
``<data dir>/reports.json`` (at most every 0.25 s, only when one changed; atomically,
0600 in a 0700 directory) and reads it back before loading the config, dropping any
older than ``report_ttl_s``. A restarted Envoy so gets the endpoints it had; a fresh
report replaces them as usual. At most a quarter second of reports is lost by a crash, and
those nodes' previous reports stand in until they report again.
"""

from __future__ import annotations

import base64
import json
import logging
import os
from pathlib import Path

from google.protobuf.message import DecodeError

from dgw_api.v1 import gateway_pb2
from xds_server.shards import NodeState

log = logging.getLogger("xds_server.report_file")

FILE_NAME = "reports.json"
_FORMAT = 1


def encode(entries: list[tuple[str, NodeState]]) -> bytes:
    return json.dumps({
        "format": _FORMAT,
        "reports": [
            {
                "shard": shard,
                "generation": node.generation,
                "received_at": node.received_at,
                "report": base64.b64encode(node.report.SerializeToString()).decode(),
            }
            for shard, node in entries
        ],
    }).encode()


def write(directory: Path, data: bytes) -> None:
    """Replace the file atomically; it and its directory are readable by us only."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    target = directory / FILE_NAME
    tmp = directory / f".{FILE_NAME}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, target)


def read(directory: Path, now: float, ttl_s: float) -> list[tuple[str, NodeState]]:
    """The persisted reports younger than ``ttl_s``; a missing or unreadable file is
    an empty list (logged), never a failure to start."""
    path = directory / FILE_NAME
    try:
        doc = json.loads(path.read_bytes())
        if doc.get("format") != _FORMAT:
            raise ValueError(f"format {doc.get('format')!r}")
        out = []
        for item in doc["reports"]:
            report = gateway_pb2.NodeReport.FromString(base64.b64decode(item["report"]))
            node = NodeState(report, int(item["generation"]), float(item["received_at"]))
            if node.received_at >= now - ttl_s:
                out.append((str(item["shard"]), node))
        return out
    except FileNotFoundError:
        return []
    except (OSError, ValueError, KeyError, TypeError, DecodeError) as e:
        log.warning("event=reports_unreadable path=%s error=%s", path, str(e)[:200])
        return []
