"""What can go wrong with an Envoy, each with a message the user can act on."""

from __future__ import annotations


class EnvoyError(Exception):
    """An Envoy could not be found, started, reached or made ready; the message says why."""


class EnvoyNotFound(EnvoyError):
    """No envoy binary where we were told to look, nor anywhere we look by default."""


class EnvoyExited(EnvoyError):
    """The Envoy ended while we were waiting on it; the message carries its last log lines."""


class EnvoyNotReady(EnvoyError):
    """The Envoy did not become ready within its deadline."""


class AdminUnavailable(EnvoyError):
    """The admin API did not answer (not written its address yet, or not listening)."""
