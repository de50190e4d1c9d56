"""Data Gateway: the ``dgw`` command line."""
