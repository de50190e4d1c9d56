"""The errors a call can end with, named like gRPC's status codes (the HTTP API maps
them to statuses). Every message names what was wrong and, for a limit, its name and
value, so the caller can act on it."""

from __future__ import annotations

import enum


class Code(enum.Enum):
    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    """The request itself is wrong: fix it, do not retry it."""
    FAILED_PRECONDITION = "FAILED_PRECONDITION"
    """The request is well formed but the DAL's state refuses it (an undeclared
    namespace, chunks not all staged)."""
    ABORTED = "ABORTED"
    """A read in pages met a value that changed between two pages: read again."""
    UNAVAILABLE = "UNAVAILABLE"
    """The storage engine cannot answer now: safe to retry (writes carry their token)."""


HTTP_STATUS = {
    Code.INVALID_ARGUMENT: 400,
    Code.FAILED_PRECONDITION: 412,
    Code.ABORTED: 409,
    Code.UNAVAILABLE: 503,
}


class KvError(Exception):
    def __init__(self, code: Code, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def invalid(message: str) -> KvError:
    return KvError(Code.INVALID_ARGUMENT, message)


def precondition(message: str) -> KvError:
    return KvError(Code.FAILED_PRECONDITION, message)
