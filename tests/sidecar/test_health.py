"""One health vocabulary: the runtimes' words, the wire values, Envoy's statuses."""

from __future__ import annotations

import pytest
from envoy.config.core.v3.health_check_pb2 import HealthStatus

from dgw_api.health import Health
from dgw_api.v1 import gateway_pb2
from xds_server.translate.endpoints import envoy_health


@pytest.mark.parametrize(
    "word, health",
    [(None, Health.NONE), ("none", Health.NONE), ("starting", Health.STARTING),
     ("healthy", Health.HEALTHY), ("unhealthy", Health.UNHEALTHY), ("bogus", Health.NONE)],
)
def test_docker_words(word, health):
    assert Health.from_word(word) is health


@pytest.mark.parametrize(
    "health, wire, back, envoy",
    [
        (Health.NONE, gateway_pb2.HEALTHY, Health.HEALTHY, HealthStatus.HEALTHY),
        (Health.HEALTHY, gateway_pb2.HEALTHY, Health.HEALTHY, HealthStatus.HEALTHY),
        (Health.STARTING, gateway_pb2.STARTING, Health.STARTING, HealthStatus.UNHEALTHY),
        (Health.UNHEALTHY, gateway_pb2.UNHEALTHY, Health.UNHEALTHY, HealthStatus.UNHEALTHY),
        (Health.DRAINING, gateway_pb2.DRAINING, Health.DRAINING, HealthStatus.DRAINING),
        (Health.UNKNOWN, gateway_pb2.HEALTH_UNKNOWN, Health.UNKNOWN, HealthStatus.UNKNOWN),
    ],
)
def test_every_health_has_one_wire_value_and_one_envoy_status(health, wire, back, envoy):
    assert health.to_pb() == wire
    assert Health.from_pb(wire) is back
    assert envoy_health(back) == envoy


def test_a_wire_value_this_code_does_not_know_gets_no_traffic():
    assert Health.from_pb(99) is Health.UNHEALTHY
    assert envoy_health(Health.from_pb(99)) == HealthStatus.UNHEALTHY
