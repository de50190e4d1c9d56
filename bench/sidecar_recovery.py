"""``dgw bench sidecar-recovery``: a DAL is killed; how long until it is healthy and
routed again.

A ``dgw server`` child and a ``dgw sidecar`` child (process runtime, its own Envoy)
serving one shard with one DAL (the sample DAL, health-checked every 500 ms). Each
round kills the DAL's process (SIGKILL, by the PID the sidecar recorded) and polls,
every 20 ms, the server's view of the node's report and a request through Envoy:

- ``reported_down_s``: kill → the server has the DAL's endpoint as not healthy;
- ``healthy_s``: kill → the server has it healthy again (a new process);
- ``routed_s``: kill → a request through Envoy is answered by the new process;
- ``failed``: requests through Envoy that failed meanwhile (one DAL: nothing else
  can answer, so this is the outage as a client sees it).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from bench.procs import (
    BenchError,
    Child,
    ServerChild,
    finish_scratch_dir,
    scratch_dir,
    wait_for,
)
from bench.report import emit, machine, note, percentile, save_json, table
from testkit.ports import free_port

SHARD = "recovery"
NODE = "bench-host"


def _shard(port: int) -> str:
    py = sys.executable
    probe = "http://127.0.0.1:$${DGW_LISTENER_API_PORT}/health"
    return f"""\
proxy_config:
  public_listeners:
    api: {{mode: http, path: {port}}}
container_dals:
  kv:
    container_cmd: [{py}, -m, dals.sample]
    container_listeners: {{api: 8080}}
    env: {{DGW_DAL_NAME: kv}}
    healthcheck:
      test: [CMD-SHELL, "{py} -m dals.sample.probe {probe}"]
      interval: 500ms
      timeout: 2s
      retries: 2
"""


class _Host:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.server = ServerChild(workdir)
        self.server.write_shard(SHARD, _shard(self.port))
        self.server.start()
        self.state_dir = workdir / "state"
        self.sidecar = Child(
            [sys.executable, "-m", "dgw.cli", "sidecar", "--server", self.server.xds, "--shard", SHARD,
             "--node-id", NODE, "--runtime", "process", "--state-dir", str(self.state_dir), "--resync", "1",
             "--stop-dals-on-exit", "--insecure"],
            log=workdir / "sidecar.log",
        )  # fmt: skip

    def pid(self) -> int | None:
        path = self.state_dir / f"{SHARD}-{NODE}" / "processes.json"
        try:
            records = json.loads(path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        live = [r["pid"] for r in records if r.get("dal") == "kv" and not r.get("exited")]
        return live[-1] if live else None

    def health(self) -> str | None:
        report = self.server.get(f"/v1/shards/{SHARD}", timeout=5).get("reports", {}).get(NODE, {})
        for e in report.get("report", {}).get("endpoints", []):
            if e.get("dal") == "kv":
                return str(e.get("health", "HEALTH_UNKNOWN"))
        return None

    def answered(self) -> bool:
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=1)
        try:
            c.request("GET", "/bench")
            r = c.getresponse()
            body = r.read()
            return r.status == 200 and json.loads(body).get("dal") == "kv"
        except (OSError, ValueError):
            return False
        finally:
            c.close()

    def close(self) -> None:
        self.sidecar.stop(timeout=15)
        pid = self.pid()
        if pid is not None:  # the sidecar normally stops it (--stop-dals-on-exit)
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.server.stop()

    def routed(self) -> bool:
        """The DAL healthy and answering through the sidecar's Envoy (BenchError if the sidecar died)."""
        self.sidecar.check("dgw sidecar")
        return self.health() == "HEALTHY" and self.answered()


def measure(kills: int, timeout: float) -> list[dict[str, Any]]:
    workdir = scratch_dir("recovery")
    host = _Host(workdir)
    ok = False
    try:
        wait_for(host.routed, 90, "the DAL healthy and routed through the sidecar's Envoy", interval=0.1)
        rows = []
        for k in range(1, kills + 1):
            pid = host.pid()
            if pid is None:
                raise BenchError("the sidecar recorded no process for the DAL")
            os.kill(pid, signal.SIGKILL)
            killed = time.monotonic()
            down = healthy = routed = None
            failed = 0
            while time.monotonic() - killed < timeout:
                host.sidecar.check("dgw sidecar")
                now = time.monotonic() - killed
                health = host.health()
                if down is None and health != "HEALTHY":
                    down = now
                if down is not None and healthy is None and health == "HEALTHY" and host.pid() not in (None, pid):
                    healthy = time.monotonic() - killed
                if host.answered():
                    if down is not None and host.pid() not in (None, pid):
                        routed = time.monotonic() - killed
                        if healthy is None:
                            healthy = routed
                        break
                else:
                    failed += 1
                time.sleep(0.02)
            if routed is None:
                raise BenchError(f"kill {k}: the DAL was not routed again within {timeout:.0f}s")
            rows.append({"kill": k, "reported_down_s": down, "healthy_s": healthy, "routed_s": routed,
                         "failed": failed})  # fmt: skip
            note(f"kill {k}: healthy after {healthy:.2f}s, routed after {routed:.2f}s")
            time.sleep(1.0)
        ok = True
        return rows
    finally:
        host.close()
        finish_scratch_dir(workdir, ok)


def main(args: argparse.Namespace) -> int:
    rows = measure(args.kills, args.timeout)
    result = {
        "figure": "sidecar-recovery",
        "command": f"dgw bench sidecar-recovery --kills {args.kills}",
        "machine": machine(),
        "note": "process runtime; health check every 500 ms, 2 retries; polled every 20 ms",
        "healthy_s_p50": percentile([r["healthy_s"] for r in rows], 50),
        "routed_s_p50": percentile([r["routed_s"] for r in rows], 50),
        "routed_s_max": max(r["routed_s"] for r in rows),
        "rows": rows,
    }
    if args.save:
        save_json(args.name or "sidecar-recovery", result, args.out)
    text = table(rows, ["kill", "reported_down_s", "healthy_s", "routed_s", "failed"],
                 "sidecar-recovery: DAL killed → healthy and routed again (seconds)")  # fmt: skip
    text += f"\n  median: healthy {result['healthy_s_p50']:.2f}s, routed {result['routed_s_p50']:.2f}s"
    emit(result, text, args.json)
    return 0
