"""``python -m dals.sample.probe URL``: a health check command for DAL containers.

Exit 0 when ``URL`` answers 2xx within the timeout, 1 otherwise; it needs only the
standard library, so any image with Python can run it (like ``curl -f``).
"""

from __future__ import annotations

import sys
import urllib.request


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m dals.sample.probe URL", file=sys.stderr)
        return 2
    try:
        with urllib.request.urlopen(argv[0], timeout=2) as response:
            return 0 if 200 <= response.status < 300 else 1
    except OSError as e:
        print(f"unhealthy: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
