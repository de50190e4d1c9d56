"""Helpers for tests and benchmarks: an Envoy-imitating xDS client, process and
port helpers. Nothing in ``xds_server`` or ``sidecar`` imports from here."""
