"""The in-process server and admin API client of tests/api, for the migrations' routes."""

from tests.api.conftest import api, server

__all__ = ["api", "server"]
