#!/usr/bin/env python3
"""A highly available Data Gateway on this one machine, as separate hosts: three etcd
members, three ``dgw server`` replicas and gateway hosts, each in a network namespace
of its own, joined by veth links (the same lab the HA tests build, ``testkit/ha_lab.py``).

    sudo .venv/bin/python deploy/ha/lab.py up [--gateways 2] [--dir .work/ha]
    sudo .venv/bin/python deploy/ha/lab.py cut r1 ctl     # cut a host's link (partition)
    sudo .venv/bin/python deploy/ha/lab.py heal r1 ctl
    sudo .venv/bin/python deploy/ha/lab.py down           # what a lab left, if it was killed

``up`` installs etcd if needed (``install-etcd.sh``), prints where everything is and
how to reach it, and runs until Ctrl-C, then removes every process, namespace and
link it made. Needs root (namespaces) and Linux. Addresses are private to the lab:
198.18.N.0/24 (the gateways' network, reachable from this machine) and
198.19.N.0/24 (etcd's network, reachable only from the replicas).
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from testkit.ha_lab import ADMIN, PUBLIC_PORT, SHARD, Cluster  # noqa: E402
from testkit.netns import available, clean_leftovers, ip  # noqa: E402

STATE = "lab.json"


def up(args: argparse.Namespace) -> int:
    subprocess.run([str(ROOT / "deploy/ha/install-etcd.sh")], check=True)
    why = available()
    if why is not None:
        print(f"lab: {why}", file=sys.stderr)
        return 1
    workdir = Path(args.dir).absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    print("lab: building hosts (etcd e1-e3, replicas r1-r3, gateways) ...", file=sys.stderr)
    cluster = Cluster.start(workdir, gateways=args.gateways)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        state = {
            "switch": cluster.lab.switch,
            "hosts": {n: {"namespace": h.namespace, **h.addresses} for n, h in cluster.lab.hosts.items()},
        }
        (workdir / STATE).write_text(json.dumps(state, indent=1))
        first = cluster.replicas["r1"]
        print(f"""
Data Gateway HA lab is up ({workdir}):
  etcd        {', '.join(f'{h.name} {h.address("ctl")}:2379' for h in cluster.etcd_hosts)}
  replicas    {', '.join(f'{n} {r.address} (xds :18000, admin :{ADMIN})' for n, r in cluster.replicas.items())}
  gateways    {', '.join(f'{n} {g.url}' for n, g in cluster.gateways.items())}
  admin token {workdir}/r1/data/admin.token (any replica takes it)

  curl -s {next(iter(cluster.gateways.values())).url}
  DGW_SERVER=http://{first.address}:{ADMIN} DGW_TOKEN=$(cat {workdir}/r1/data/admin.token) .venv/bin/dgw status
  curl -s -H "Authorization: Bearer $(cat {workdir}/r1/data/admin.token)" http://{first.address}:{ADMIN}/v1/replicas
  sudo ip netns exec {cluster.replicas['r1'].host.namespace} kill -9 <pid>   # or: deploy/ha/lab.py cut r1 ctl
Shard {SHARD!r} serves on port {PUBLIC_PORT} of every gateway. Ctrl-C removes everything.""")
        try:
            stop.wait()
        except KeyboardInterrupt:
            pass
    finally:
        print("lab: stopping and removing the hosts", file=sys.stderr)
        cluster.close()
        (workdir / STATE).unlink(missing_ok=True)
    return 0


def link(args: argparse.Namespace, state: str) -> int:
    doc = json.loads((Path(args.dir) / STATE).read_text())
    name = f"{args.host}-{args.network[0]}"
    ip("-n", doc["switch"], "link", "set", name, state)
    print(f"lab: {args.host}'s {args.network} link is {state}")
    return 0


def down(args: argparse.Namespace) -> int:
    removed = clean_leftovers()
    print(f"lab: removed {', '.join(removed) or 'nothing'}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(prog="deploy/ha/lab.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", default=str(ROOT / ".work" / "ha"), help="where logs and data go")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("up", help="build the lab and run it until Ctrl-C")
    p.add_argument("--gateways", type=int, default=2, choices=range(1, 10), metavar="1-9")
    p.set_defaults(func=up)
    for command, state in (("cut", "down"), ("heal", "up")):
        p = sub.add_parser(command, help=f"{'drop' if state == 'down' else 'restore'} a host's link")
        p.add_argument("host", help="e1-e3, r1-r3, g1...")
        p.add_argument("network", choices=["ctl", "edge"])
        p.set_defaults(func=lambda a, s=state: link(a, s))
    sub.add_parser("down", help="remove what a killed lab left").set_defaults(func=down)
    args = parser.parse_args()
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
