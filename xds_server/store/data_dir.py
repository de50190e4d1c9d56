"""Where the xds_server keeps its state (the config store's database): one place.

``--data-dir`` (the server's flag) wins; else ``$DGW_DATA_DIR``; else
``$XDG_DATA_HOME/dgw``; else ``~/.local/share/dgw``. The directory is created 0700 and
the database 0600: it may hold secrets.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

DATA_DIR_ENV = "DGW_DATA_DIR"


def default_data_dir(env: Mapping[str, str] = os.environ) -> Path:
    """The data directory when ``--data-dir`` is not given."""
    if env.get(DATA_DIR_ENV):
        return Path(env[DATA_DIR_ENV]).expanduser()
    if env.get("XDG_DATA_HOME"):
        return Path(env["XDG_DATA_HOME"]) / "dgw"
    return Path.home() / ".local" / "share" / "dgw"
