"""Errors that end ``dgw sidecar`` with a message the user can act on."""


class SidecarError(Exception):
    """The agent cannot start as asked; the message says what to change."""
