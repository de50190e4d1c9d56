"""The server's Prometheus metrics: one registry, the metric objects, nothing else.

Callers observe (the ADS server counts pushes, ACKs and NACKs; the shard registry
counts rejected configs; the config store's writers time their writes with
``STORE_WRITE_SECONDS``) and ``GET /metrics`` renders ``REGISTRY``. Labels are kept
to bounded sets: shard (as many as configured shards), protocol, resource type and
outcome; never a node id, a version or a message, which would grow without bound.
"""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

# The `_created` timestamp series double every counter's lines and say nothing a
# scraper does not know from the process start.
disable_created_metrics()  # type: ignore[no-untyped-call]

REGISTRY = CollectorRegistry(auto_describe=True)

CONNECTED_NODES = Gauge(
    "dgw_xds_connected_streams",
    "ADS streams connected now, by shard and protocol (a node reconnecting briefly holds two)",
    ["shard", "protocol"],
    registry=REGISTRY,
)
PUSHES = Counter(
    "dgw_xds_pushes",
    "xDS responses sent, by shard and resource type",
    ["shard", "type"],
    registry=REGISTRY,
)
ACKS = Counter(
    "dgw_xds_acks",
    "xDS responses a node accepted, by shard and resource type",
    ["shard", "type"],
    registry=REGISTRY,
)
NACKS = Counter(
    "dgw_xds_nacks",
    "xDS responses a node rejected, by shard and resource type",
    ["shard", "type"],
    registry=REGISTRY,
)
PUSH_TO_ACK_SECONDS = Histogram(
    "dgw_xds_push_to_ack_seconds",
    "From writing an xDS response to the node's ACK of it, by resource type",
    ["type"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
    registry=REGISTRY,
)
CONFIGS_REJECTED = Counter(
    "dgw_configs_rejected",
    "Shard configs refused (invalid, untranslatable or unsafe); the running config stayed",
    ["shard"],
    registry=REGISTRY,
)
STORE_WRITE_SECONDS = Histogram(
    "dgw_store_write_seconds",
    "Config store writes (committed to disk) by operation, e.g. put, delete, audit",
    ["op"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
    registry=REGISTRY,
)
HTTP_REFUSED = Counter(
    "dgw_admin_refused",
    "Admin API requests refused by access control, by HTTP status (401, 403)",
    ["status"],
    registry=REGISTRY,
)

RESILIENCE = Counter(
    "dgw_resilience_events",
    "What a shard's Envoys counted of their resilience policies, from their reported stats: "
    "group shed (requests refused at once), retried (retries, hedges, refusals by the budget) "
    "or ejected (outlier ejections), and the reason (envoy_proxy.stats.RESILIENCE)",
    ["shard", "group", "reason"],
    registry=REGISTRY,
)
EJECTED_HOSTS = Gauge(
    "dgw_ejected_hosts",
    "Hosts outlier detection holds ejected now, summed over a shard's nodes' latest stats",
    ["shard"],
    registry=REGISTRY,
)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class XdsSeries:
    """One shard's and type's xDS series, resolved once: ``labels()`` takes a lock and
    builds a key on every call, and the ADS streams count every push and ACK."""

    __slots__ = ("acks", "latency", "nacks", "pushes")

    def __init__(self, shard: str, kind: str) -> None:
        self.pushes = PUSHES.labels(shard, kind)
        self.acks = ACKS.labels(shard, kind)
        self.nacks = NACKS.labels(shard, kind)
        self.latency = PUSH_TO_ACK_SECONDS.labels(kind)


_XDS: dict[tuple[str, str], XdsSeries] = {}


def xds(shard: str, kind: str) -> XdsSeries:
    """The series of ``shard`` and ``kind`` (``clusters``, ``routes``, ..., ``other``)."""
    series = _XDS.get((shard, kind))
    if series is None:
        series = _XDS[(shard, kind)] = XdsSeries(shard, kind)
    return series


def render() -> bytes:
    """The exposition text of every metric."""
    return generate_latest(REGISTRY)
