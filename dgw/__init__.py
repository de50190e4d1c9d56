"""Data Gateway: the ``dgw`` command and the generated ``dgw.v1`` API messages."""
