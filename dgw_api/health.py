"""The one health vocabulary of a DAL instance, and its wire form (``dgw.v1.Health``).

The sidecar observes it (Docker's and the process runtime's health words are these
values), reports it, and the xds_server reads it back to tell Envoy where to route.
Both programs import this module; neither keeps a table of its own.
"""

from __future__ import annotations

import enum

from dgw_api.v1 import gateway_pb2


class Health(enum.Enum):
    """Values are Docker's words (``State.Health.Status``) where Docker has them."""

    NONE = "none"  # no health check: running is as good as it gets
    STARTING = "starting"
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"
    DRAINING = "draining"  # being stopped or replaced: finish, take no new traffic
    UNKNOWN = "unknown"  # a report that did not say

    @classmethod
    def from_word(cls, word: str | None) -> Health:
        """A runtime's health word; no word (no health check) is ``NONE``."""
        try:
            return cls(word or "none")
        except ValueError:
            return cls.NONE

    @property
    def serving(self) -> bool:
        """Whether traffic may be sent to it."""
        return self in (Health.HEALTHY, Health.NONE)

    def to_pb(self) -> gateway_pb2.Health:
        return _TO_PB[self]

    @classmethod
    def from_pb(cls, value: int) -> Health:
        """A reported value; one this code does not know yet must not attract traffic."""
        return _FROM_PB.get(value, cls.UNHEALTHY)


_TO_PB: dict[Health, gateway_pb2.Health] = {
    Health.NONE: gateway_pb2.HEALTHY,
    Health.STARTING: gateway_pb2.STARTING,
    Health.HEALTHY: gateway_pb2.HEALTHY,
    Health.UNHEALTHY: gateway_pb2.UNHEALTHY,
    Health.DRAINING: gateway_pb2.DRAINING,
    Health.UNKNOWN: gateway_pb2.HEALTH_UNKNOWN,
}
_FROM_PB: dict[int, Health] = {
    int(gateway_pb2.HEALTH_UNKNOWN): Health.UNKNOWN,
    int(gateway_pb2.STARTING): Health.STARTING,
    int(gateway_pb2.HEALTHY): Health.HEALTHY,
    int(gateway_pb2.UNHEALTHY): Health.UNHEALTHY,
    int(gateway_pb2.DRAINING): Health.DRAINING,
}
