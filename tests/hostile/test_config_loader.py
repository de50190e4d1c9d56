"""Hostile shard files against the loader: each is a short ConfigError, fast and small.

Bounds are generous (the real figures are milliseconds and kilobytes); before the
hardening each of these took seconds to minutes, hundreds of MB, or ended in an
exception that was not a ConfigError.
"""

from __future__ import annotations

import time
import tracemalloc

import pytest

from xds_server.config import ConfigError, EnvPolicy, load_shard_checked, load_shard_file
from xds_server.settings import Limits

from .corpus import GOOD, HUGE_KEY, HUGE_VALUE, NESTED, SECRET, SECRET_SHARD, alias_bomb

MESSAGE_BOUND = 2_000  # characters of all problems together


def refused(text: str, env: dict[str, str] | None = None) -> tuple[ConfigError, float, int]:
    """The ConfigError, the seconds it took and the peak bytes allocated."""
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(ConfigError) as caught:
            load_shard_checked(text, "s.yaml", env if env is not None else {})
    finally:
        elapsed = time.perf_counter() - started
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert len(str(caught.value)) < MESSAGE_BOUND, str(caught.value)[:300]
    return caught.value, elapsed, peak


def test_deep_nesting_is_a_short_error_not_a_recursion_error():
    error, elapsed, peak = refused(NESTED)
    assert "nest" in str(error)  # ours (32 levels) or libyaml's (1,000), both short
    assert elapsed < 1.0 and peak < 20_000_000


def test_the_alias_bomb_is_refused_before_it_expands():
    text = alias_bomb()
    assert len(text) < 600
    error, elapsed, peak = refused(text)
    assert "once aliases are expanded" in str(error)
    assert elapsed < 1.0 and peak < 20_000_000


def test_one_level_deeper_is_refused_the_same_way():
    error, elapsed, peak = refused(alias_bomb(9))
    assert "once aliases are expanded" in str(error)
    assert elapsed < 1.0 and peak < 20_000_000


def test_small_aliases_are_allowed():
    text = GOOD.replace("kv: {container_listeners: {api: 18081}}",
                        "kv: {container_listeners: {api: 18081}, env: &e {A: '1'}}\n"
                        "  kv2: {container_listeners: {internal: 18082}, env: *e}")
    config = load_shard_checked(text, "s.yaml", {}).config
    assert config.container_dals["kv2"].env == config.container_dals["kv"].env


@pytest.mark.parametrize("text", [HUGE_VALUE, HUGE_KEY], ids=["value", "key"])
def test_offending_values_are_quoted_up_to_a_bound(text):
    error, _, _ = refused(text)
    assert "chars)" in str(error)  # the cut is said, with the real length


def test_a_file_over_the_size_limit_is_refused_before_it_is_read(tmp_path):
    path = tmp_path / "big.yaml"
    with open(path, "wb") as f:
        f.truncate(50 * 1024 * 1024)  # sparse: 50 MB that cost nothing to make
    started = time.perf_counter()
    with pytest.raises(ConfigError, match="more than the 1048576 a shard file may have"):
        load_shard_file(path)
    assert time.perf_counter() - started < 0.5


def test_the_size_limit_is_a_setting(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(GOOD)
    with pytest.raises(ConfigError, match="more than the 10 a shard"):
        load_shard_file(path, limits=Limits(shard_file_bytes=10))


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n", "---\n"])
def test_an_empty_file_is_a_rejection_not_an_empty_shard(text):
    with pytest.raises(ConfigError, match="the file is empty"):
        load_shard_checked(text, "s.yaml", {})


def test_a_truncated_file_is_a_rejection():
    with pytest.raises(ConfigError):
        load_shard_checked(GOOD[: GOOD.index("container_dals")], "s.yaml", {})


def test_interpolation_reads_only_allowed_variables():
    with pytest.raises(ConfigError, match="variable 'HOME' may not be read"):
        load_shard_checked(GOOD.replace("18081", "${HOME}"), "s.yaml", {"HOME": "/root"})
    with pytest.raises(ConfigError, match="may not be read"):  # even with a default
        load_shard_checked(GOOD.replace("18081", "${HOME:-18081}"), "s.yaml", {})
    allowed = load_shard_checked(GOOD.replace("18081", "${DGW_PORT}"), "s.yaml", {"DGW_PORT": "18082"})
    assert allowed.config.container_dals["kv"].container_listeners["api"] == 18082
    listed = load_shard_checked(GOOD.replace("18081", "${PORT}"), "s.yaml", {"PORT": "18083"},
                                EnvPolicy(frozenset({"PORT"})))
    assert listed.secrets == {"18083"}


def test_problems_never_show_an_interpolated_value():
    broken = SECRET_SHARD.replace("postgresql://", "ftp://")  # not a scheme we know
    with pytest.raises(ConfigError) as caught:
        load_shard_checked(broken, "s.yaml", {"DGW_DB_PASSWORD": SECRET})
    assert "has scheme 'ftp'" in str(caught.value)
    assert SECRET not in str(caught.value)
    assert "ftp://app:***@" in str(caught.value)


def test_a_flood_of_problems_is_cut_to_a_bound():
    listeners = "\n".join(f"    l{i}: {{mode: http, path: {20000 + i}}}" for i in range(300))
    text = f"proxy_config:\n  public_listeners:\n{listeners}\n"
    with pytest.raises(ConfigError) as caught:
        load_shard_checked(text, "s.yaml", {})
    assert len(caught.value.problems) == 51
    assert "and 250 more problems" in str(caught.value.problems[-1])
