"""A process that writes versions of one shard as fast as it can and prints the number
of each version once ``put`` has returned (acknowledged), until it is killed.

``python -m tests.store.crash_writer DATA_DIR`` carries on from the shard's head, so
the crash test can kill it, check, and start it again on the same directory.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from xds_server.store import API_OWNER, SqliteStore

SHARD = "crash"
# A guard only: the test kills the writer long before.
MAX_WRITES = 100_000


def crash_text(number: int) -> str:
    """Version ``number``'s text: sizes from a line to ~60 KiB, so writes span many pages."""
    filler = "".join(f"  line{i}: {number * 7919 + i:012d}\n" for i in range(number * 37 % 2000))
    return f"# version {number}\nfiller:\n{filler}"


async def main(data_dir: Path) -> None:
    store = await SqliteStore.open(data_dir)
    head = await store.get(SHARD)
    base = None if head is None else head.meta.number
    for _ in range(MAX_WRITES):
        number = 1 if base is None else base + 1
        version = await store.put(SHARD, crash_text(number), base_version=base, author="crash-writer",
                                  message=f"write {number}", source="api", owner=API_OWNER)  # fmt: skip
        sys.stdout.write(f"{version.number}\n")
        sys.stdout.flush()
        base = version.number
    await store.close()


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1])))
