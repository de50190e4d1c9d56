"""The shard every figure measures: DAL ``thrift`` behind an HTTP and a gRPC listener,
and, when wired, DAL ``cql`` as its shadow or split target."""

from __future__ import annotations


def bench_shard(http: int, grpc: int, wiring: str | None = None) -> str:
    """The shard file's text; ``wiring`` is YAML for thrift's wiring (None: thrift alone)."""
    text = (
        "proxy_config:\n"
        "  public_listeners:\n"
        f"    api: {{mode: http, path: {http}}}\n"
        f"    secure_grpc: {{mode: grpc, path: {grpc}}}\n"
        "container_dals:\n"
        "  thrift:\n"
        "    container_listeners: {api: 8081, secure_grpc: 8981}\n"
    )
    if wiring is None:
        return text
    return text + (
        "  cql:\n"
        "    container_listeners: {api: 8081, secure_grpc: 8981}\n"
        f"wiring: {wiring}\n"
    )
