"""Benchmarks of the Data Gateway: ``dgw bench FIGURE`` (see ``bench/README.md``).

Each figure is an operator-facing performance check: it starts what it measures as
child processes on loopback, runs a bounded load, prints a table (or one JSON object
with ``--json``) and keeps its results under ``bench/results/``.
"""
