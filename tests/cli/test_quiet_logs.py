"""Routine events stay out of the way at the default level (issue 10, point 9): a
sidecar's periodic re-report of an unchanged state logs at DEBUG, a change at INFO."""

from __future__ import annotations

import logging

import pytest

from dgw_api.v1 import gateway_pb2
from xds_server.cache import SnapshotCache
from xds_server.shards import ShardRegistry


def report(health: int) -> gateway_pb2.NodeReport:
    return gateway_pb2.NodeReport(
        shard="kv", node_id="n1", host_address="127.0.0.1",
        endpoints=[gateway_pb2.Endpoint(dal="kv", listener="api", address="127.0.0.1", port=18081, health=health)],
    )


def test_an_unchanged_report_is_logged_at_debug(caplog: pytest.LogCaptureFixture) -> None:
    registry = ShardRegistry(SnapshotCache())
    caplog.set_level(logging.DEBUG, logger="xds_server.shards")

    for health in (gateway_pb2.STARTING, gateway_pb2.HEALTHY, gateway_pb2.HEALTHY, gateway_pb2.HEALTHY):
        registry.report(report(health))

    levels = [r.levelname for r in caplog.records if "event=report" in r.getMessage()]
    assert levels == ["INFO", "INFO", "DEBUG", "DEBUG"]
