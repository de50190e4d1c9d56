"""Helpers for integration tests: free loopback ports, child processes, real Envoy."""
