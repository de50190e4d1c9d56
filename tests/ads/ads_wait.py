"""Waiting on conditions with a deadline: the one async helper, ``testkit.wait.eventually``."""

from testkit.wait import eventually

__all__ = ["eventually"]
