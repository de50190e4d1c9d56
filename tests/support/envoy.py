"""A real Envoy for synchronous tests: the project's launcher (``envoy_proxy``),
started with a gateway or client-proxy bootstrap and waited on until ready."""

from __future__ import annotations

from pathlib import Path

from envoy_proxy import BlockingEnvoy, make_bootstrap, make_client_bootstrap

READY_TIMEOUT_S = 20.0


def start_envoy(
    shard: str,
    node_id: str,
    xds_port: int,
    workdir: Path,
    delta: bool = False,
    client: tuple[str, int] | None = None,
) -> BlockingEnvoy:
    """A ready gateway Envoy of ``shard``; or, with ``client=(ADDRESS/LISTENER, port)``,
    a client-side proxy on ``port`` to the hosts registered under that address."""
    xds = f"127.0.0.1:{xds_port}"
    if client:
        config = make_client_bootstrap(node_id, xds, client[0], f"127.0.0.1:{client[1]}", delta)
    else:
        config = make_bootstrap(shard, node_id, xds, delta)
    envoy = BlockingEnvoy(config, workdir, name=f"envoy-{node_id}", concurrency=1)
    try:
        envoy.wait_ready(READY_TIMEOUT_S)
    except BaseException:
        envoy.stop()
        raise
    return envoy
