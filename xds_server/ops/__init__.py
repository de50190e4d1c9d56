"""Operators' changes to a shard, as pure functions: wiring operations on the shard's
text (``wiring``) and what a change would do to the text and to Envoy (``diff``)."""
