"""A gateway's SDS server (the sidecar's ``LocalSds``) in a child process, for tests and
benchmarks that hand a gateway Envoy its certificates from files.

Why a child: the test's own process stays free of a long-lived gRPC server while it
starts the other children (a process whose gRPC pollers run must never fork with
``preexec_fn``: see ``testkit.procs.raise_open_files_limit``). The certificate, key and bundle files are served as the secrets of the
named providers and served again when they change (a rotation is a rewrite of them).

``python -m testkit.sds SOCKET SHARD PROVIDER[,PROVIDER] CERT KEY BUNDLE``
"""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

from testkit.procs import Child
from testkit.wait import wait_until

READY_TIMEOUT_S = 15.0


class SdsChild:
    """``python -m testkit.sds`` serving ``files`` (certificate, key, bundle) on ``socket_path``."""

    def __init__(self, socket_path: Path, shard: str, providers: list[str], files: dict[str, Path], log: Path) -> None:
        self.socket_path = socket_path
        self.child = Child(
            [sys.executable, "-m", "testkit.sds", str(socket_path), shard, ",".join(providers),
             str(files["certificate"]), str(files["key"]), str(files["bundle"])],
            log,
        )  # fmt: skip
        try:
            wait_until(lambda: self._ready(), READY_TIMEOUT_S, what=f"the SDS server on {socket_path}")
        except BaseException:
            self.child.stop()
            raise

    def _ready(self) -> bool:
        self.child.check("the SDS server")
        return "event=sds_secrets" in self.child.log_tail(100_000)

    def stop(self) -> None:
        self.child.stop()


async def _serve(socket_path: Path, shard: str, providers: list[str], files: list[Path]) -> None:
    from dgw.client_proxy import IdentityFiles, follow_files
    from sidecar.sds import LocalSds

    identity = IdentityFiles(files[0], files[1], files[2])
    creds = identity.load()
    sds = LocalSds(socket_path, shard)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await sds.start()
    try:
        sds.serve(providers, creds)
        await follow_files(identity, sds, providers, stop)
    finally:
        await sds.stop()


def main(argv: list[str]) -> None:
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    socket_path, shard, providers, *files = argv
    asyncio.run(_serve(Path(socket_path), shard, providers.split(","), [Path(f) for f in files]))


if __name__ == "__main__":
    main(sys.argv[1:])
