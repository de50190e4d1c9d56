"""The in-process server and admin API client of ``tests/api`` serve these tests too."""

from tests.api.conftest import api, server

__all__ = ["api", "server"]
