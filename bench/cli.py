"""``dgw bench FIGURE``: the operator-facing performance checks.

Each figure prints a table (``--json``: one JSON object on stdout), keeps its JSON
(and a PNG where a curve says more) in a scratch directory (``--out bench/results``
updates the tracked results, so a user's run never dirties the checkout), and exits 1
if a target it checks is missed, like ``etcdctl check perf``. Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from bench.procs import BenchError


def _sizes(text: str) -> list[int]:
    try:
        values = [int(v.replace("_", "")) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers") from None
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: every size must be a positive number")
    return values


def _floats(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers") from None
    if not values or any(v < 0 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: every value must be 0 or more")
    return values


def scratch_results() -> Path:
    """Where a run's files go unless ``--out`` says otherwise: the user's cache."""
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "dgw" / "bench"


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument("--out", type=Path, default=scratch_results(),
                   help="where results go (default: %(default)s; --out bench/results updates the "
                        "tracked results)")
    p.add_argument("--name", help="result file name (default: derived from the figure and options)")
    p.add_argument("--no-save", dest="save", action="store_false", help="print only, keep no files")


Command = Callable[[argparse.Namespace], int]


def _run(figure: Command) -> Command:
    def run(args: argparse.Namespace) -> int:
        import signal
        import sys

        # SIGTERM unwinds like Ctrl-C: every figure's cleanup stops the children it started.
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
        try:
            code: int = figure(args)
        except BenchError as e:
            print(f"dgw bench: {e}", file=sys.stderr)
            return 2
        if args.save:
            print(f"dgw bench: files written to {args.out}", file=sys.stderr)
        return code

    return run


def cmd_fleet(args: argparse.Namespace) -> int:
    from bench import fleet

    if args.store is None:
        args.store = "etcd" if args.replicas > 1 else "sqlite"
    if args.replicas > 1 and (args.store != "etcd" or args.streams_per_channel != 1 or args.tls):
        raise BenchError("--replicas needs --store etcd, one stream per channel and no --tls")

    return fleet.main(args)


def cmd_translate_scale(args: argparse.Namespace) -> int:
    from bench import translate_scale

    return translate_scale.main(args)


def cmd_data_path(args: argparse.Namespace) -> int:
    if args.overload:
        from bench import overload

        return overload.run(args)
    if args.tls:
        from bench import data_path_tls

        return data_path_tls.main(args)
    from bench import data_path

    return data_path.main(args)


def _overload_arguments(p: argparse.ArgumentParser) -> None:
    """``data-path --overload``'s options (bench/overload.py)."""
    g = p.add_argument_group("--overload")
    g.add_argument("--overload", action="store_true",
                   help="the overload figure instead: shedding at 1×/2×/4× a fixed-capacity DAL, priorities, "
                        "hedging around a slow endpoint (bench/overload.py)")
    g.add_argument("--dal-concurrency", type=int, default=4, help="with --overload: requests the DAL serves at once")
    g.add_argument("--service-ms-overload", dest="overload_service_ms", type=float, default=40.0,
                   help="with --overload: the DAL's service time (capacity = concurrency / service time)")
    g.add_argument("--overload-rounds", type=int, default=2,
                   help="with --overload: rounds of every case (their order rotating)")
    g.add_argument("--seconds", type=float, default=3.0, help="with --overload: seconds of each offered load")
    g.add_argument("--timeout", type=float, default=5.0, help="with --overload: a request's client-side limit (s)")
    g.add_argument("--high-share", type=float, default=0.5,
                   help="with --overload: the high-priority class's load, in capacities, of the 4× total")
    g.add_argument("--hedge-rate", type=float, default=50.0, help="with --overload: reads per second to the DAL pair")
    g.add_argument("--hedge-seconds", type=float, default=6.0, help="with --overload: seconds of each hedging case")
    g.add_argument("--hedge-service-ms", type=float, default=2.0, help="with --overload: the DAL pair's service time")
    g.add_argument("--hedge-slow-ms", type=float, default=200.0,
                   help="with --overload: how late the slow endpoint answers its slow share")
    g.add_argument("--slow-percent", type=float, default=10.0,
                   help="with --overload: the share of the slow endpoint's answers that are late")
    g.add_argument("--per-try-ms", type=float, default=30.0, help="with --overload: the per-try timeout that hedges")


def cmd_sidecar_recovery(args: argparse.Namespace) -> int:
    from bench import sidecar_recovery

    return sidecar_recovery.main(args)


def cmd_kv(args: argparse.Namespace) -> int:
    from bench import kv

    return kv.main(args)

def cmd_rollout(args: argparse.Namespace) -> int:
    from bench import rollout

    return rollout.main(args)


def cmd_plan(args: argparse.Namespace) -> int:
    from bench import plan

    return plan.main(args)


def cmd_kv_cpu(args: argparse.Namespace) -> int:
    from bench import kv_cpu

    return kv_cpu.main(args)


def cmd_migrate(args: argparse.Namespace) -> int:
    from bench import migrate

    return migrate.main(args)


def cmd_store(args: argparse.Namespace) -> int:
    from bench import store

    return store.main(args)


def cmd_etcd_client(args: argparse.Namespace) -> int:
    from bench import etcd_client

    return etcd_client.main(args)


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``bench`` and its figures to the ``dgw`` command."""
    bench = sub.add_parser("bench", help="performance checks (see bench/README.md)")
    figures = bench.add_subparsers(dest="figure", required=True, metavar="FIGURE")

    p = figures.add_parser("xds-fleet", help="edit → every node ACKed, CPU, memory per node, bytes")
    p.add_argument("--nodes", type=_sizes, default=[1000], help="fleet sizes, e.g. 1000,5000,10000 (a fresh server each)")
    p.add_argument("--shards", type=int, default=1, help="shards the nodes are spread over (node i → shard i mod S)")
    p.add_argument("--delta", action="store_true", help="incremental xDS instead of state of the world")
    p.add_argument("--envoys", type=int, default=2, help="real Envoys that join the fleet (0-3)")
    p.add_argument("--edits", type=int, default=5, help="wiring edits, one after another")
    p.add_argument("--edit-shards", type=int, help="shards each edit rewrites (default: all)")
    p.add_argument("--workers", type=int, default=2, help="load generator processes (1-2)")
    p.add_argument("--streams-per-channel", type=int, default=1,
                   help="nodes sharing one HTTP/2 connection (1: each node its own, as Envoy)")
    p.add_argument("--edit-timeout", type=float, default=30.0, help="seconds an edit may take to converge")
    p.add_argument("--deadline", type=float, default=600.0, help="hard limit for each fleet size, seconds")
    p.add_argument("--nack-nodes", type=int, default=0, help="nodes that NACK every route update (harness check)")
    p.add_argument("--keep", action="store_true", help="keep the work dir (logs, shard files)")
    p.add_argument("--server-log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    p.add_argument("--via", default="file", choices=["file", "api"],
                   help="edits as file writes (the watched dir) or PUTs through the operators' API")
    p.add_argument("--tls", action="store_true",
                   help="mTLS control port: every node connects with its own certificate (no real Envoys)")
    p.add_argument("--renew-rate", type=float, default=0.0,
                   help="with mTLS: certificate renewals per second during every other edit, after a storm "
                        "of --renewals that measures the server's CPU per 1,000 signatures")
    p.add_argument("--renewals", type=int, default=1000, help="renewals in the storm (with --renew-rate)")
    p.add_argument("--replicas", type=int, default=1, help="dgw server replicas over one etcd member (implies "
                   "--store etcd); node i connects to replica i mod R, edits go through the first")
    p.add_argument("--store", choices=["sqlite", "etcd", "both"], default=None,
                   help="the config store (default: etcd with --replicas > 1, else sqlite); both: one run each")
    p.add_argument("--kill-replica", action="store_true",
                   help="after the edits, kill -9 the last replica: its nodes reconnect to the others, an "
                        "edit is made meanwhile; time until every node is SYNCED again")
    _common(p)
    p.set_defaults(func=_run(cmd_fleet))

    p = figures.add_parser("translate-scale", help="cost of one single-shard edit at 10 … 10,000 shards")
    p.add_argument("--sizes", type=_sizes, default=[10, 1000, 10000], help="shards held, e.g. 10,1000,10000")
    p.add_argument("--edits", type=int, default=50, help="edits measured at each size")
    _common(p)
    p.set_defaults(func=_run(cmd_translate_scale))

    p = figures.add_parser("data-path", help="latency and rate through Envoy vs direct, with shadow wiring")
    p.add_argument("--rate", type=float, default=200.0, help="requests per second offered (paced)")
    p.add_argument("--block", type=int, default=100, help="requests in a row to one case before the next")
    p.add_argument("--concurrency", type=int, default=16, help="in-flight limit of the throughput run")
    p.add_argument("--slow-ms", type=float, default=100.0, help="extra response delay of the slow shadow target")
    p.add_argument("--rounds", type=int, default=20, help="rounds of one block per case (noise control)")
    p.add_argument("--service-ms", type=_floats, default=[0.0, 1.0],
                   help="DAL service times to measure at, e.g. 0,1 (ms every DAL waits before answering)")
    p.add_argument("--let-cpus-sleep", dest="quick_wakeups", action="store_false",
                   help="do not hold /dev/cpu_dma_latency at 0 while measuring (idle CPUs halt, wake slowly)")
    p.add_argument("--tls", action="store_true",
                   help="the TLS case instead: latency added by mTLS + RBAC on a kept-alive connection (and "
                        "through the client proxy), and new mTLS connections per second through one Envoy")
    p.add_argument("--tls-seconds", type=float, default=5.0, help="with --tls: how long connections are opened")
    p.add_argument("--tls-callers", type=int, default=2, help="with --tls: openssl s_time callers opening them")
    _overload_arguments(p)
    _common(p)
    p.set_defaults(func=_run(cmd_data_path))

    p = figures.add_parser("sidecar-recovery", help="DAL killed → healthy and routed again")
    p.add_argument("--kills", type=int, default=3, help="times the DAL is killed")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds one recovery may take")
    _common(p)
    p.set_defaults(func=_run(cmd_sidecar_recovery))

    p = figures.add_parser("kv", help="Key-Value DAL through Envoy + mTLS vs asyncpg direct, with the Redis cache")
    p.add_argument("--rate", type=float, default=500.0, help="requests per second offered, open loop")
    p.add_argument("--block", type=float, default=3.0, help="seconds of one case before the next")
    p.add_argument("--rounds", type=int, default=3, help="rounds of one block per case (noise control)")
    p.add_argument("--records", type=int, default=1000, help="records read and written (1 KiB each)")
    p.add_argument("--sweep", type=_floats, default=[500.0, 1000.0, 1500.0, 2000.0, 3000.0],
                   help="rates tried through the gateway until p99 passes 25 ms (empty: none)")
    p.add_argument("--profile", type=float, default=0.0,
                   help="sample the DAL with py-spy for this many seconds of gateway load and show where time goes")
    p.add_argument("--let-cpus-sleep", dest="quick_wakeups", action="store_false",
                   help="do not hold /dev/cpu_dma_latency at 0 while measuring")
    _common(p)
    p.set_defaults(func=_run(cmd_kv))

    p = figures.add_parser("migrate", help="migration runner: backfill items/s SQLite → PostgreSQL, verify with planted differences")
    p.add_argument("--items", type=int, default=200_000, help="items the backfill copies, each round (0: skip)")
    p.add_argument("--rounds", type=int, default=2, help="backfill rounds, each into a fresh target")
    p.add_argument("--verify-items", type=int, default=1_000_000, help="items in both DALs for verify (0: skip)")
    p.add_argument("--verify-rounds", type=int, default=2, help="verify runs over the same data")
    p.add_argument("--value-bytes", type=int, default=1024, help="bytes per value")
    p.add_argument("--page-bytes", type=int, default=1 << 20, help="the backfill's Export page budget")
    _common(p)
    p.set_defaults(func=_run(cmd_migrate))

    p = figures.add_parser("kv-cpu", help="the KV DAL's CPU per call: this tree against --baseline DIR, interleaved")
    p.add_argument("--baseline", type=Path, required=True,
                   help="a checkout to compare against (e.g. git archive main | tar -x -C DIR)")
    p.add_argument("--rate", type=float, default=300.0, help="calls per second offered to each DAL, open loop")
    p.add_argument("--block", type=float, default=3.0, help="seconds of one DAL's load before the other's")
    p.add_argument("--rounds", type=int, default=8, help="rounds of one block per DAL")
    p.add_argument("--records", type=int, default=500, help="records read and written (1 KiB each)")
    p.add_argument("--cached", action="store_true", help="the namespace with the Redis look-aside cache")
    p.add_argument("--let-cpus-sleep", dest="quick_wakeups", action="store_false",
                   help="do not hold /dev/cpu_dma_latency at 0 while measuring")
    _common(p)
    p.set_defaults(func=_run(cmd_kv_cpu))

    p = figures.add_parser("rollout", help="a rollout across many shards of simulated nodes: time per wave beyond the bake, CPU")
    p.add_argument("--shards", type=int, default=1000, help="shards rolled out (over 4 tiers and --regions locations)")
    p.add_argument("--nodes", type=int, default=0, help="simulated nodes, node i in shard i mod S (default: one per shard)")
    p.add_argument("--regions", type=int, default=2, choices=[1, 2, 3, 4], help="locations per tier")
    p.add_argument("--bake", type=float, default=2.0, help="bake seconds per wave")
    p.add_argument("--workers", type=int, default=2, help="load-generator processes of each kind")
    p.add_argument("--keep", action="store_true", help="keep the scratch directory")
    _common(p)
    p.set_defaults(func=_run(cmd_rollout))

    p = figures.add_parser("plan", help="dgw plan of the seed's desires: first, cold and cached")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds of a cold and a cached plan")
    _common(p)
    p.set_defaults(func=_run(cmd_plan))

    p = figures.add_parser("store", help="config store: write latency (synchronous commits), history listing")
    p.add_argument("--versions", type=int, default=1000, help="versions written, one after another, each timed")
    p.add_argument("--history", type=int, default=10000, help="versions of the shard whose history is listed")
    p.add_argument("--repeats", type=int, default=20, help="times the history is listed")
    p.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()),
                   help="where the scratch data directory goes (its disk's fsync is measured)")
    _common(p)
    p.set_defaults(func=_run(cmd_store))

    p = figures.add_parser("etcd-client", help="etcd's gRPC API vs its JSON gateway: latency, client CPU per op")
    p.add_argument("--ops", type=int, default=500, help="operations of each kind per client and round")
    p.add_argument("--rounds", type=int, default=4, help="interleaved rounds (the clients alternate first)")
    _common(p)
    p.set_defaults(func=_run(cmd_etcd_client))
