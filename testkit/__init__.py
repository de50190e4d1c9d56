"""Helpers for tests and benchmarks: loopback ports (``ports``), waiting with a deadline
(``wait``), child processes stopped by PID (``procs``) and an Envoy-imitating xDS client
(``ads_client``). Nothing in ``xds_server`` or ``sidecar`` imports from here."""
