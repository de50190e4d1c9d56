"""Property: whatever text a shard file holds, the loader answers a ConfigError or a
checked config, never another exception, and quickly."""

from __future__ import annotations

import time

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xds_server.config import ConfigError, ShardFile, load_shard_checked
from xds_server.settings import Limits

from .corpus import GOOD, alias_bomb

LIMITS = Limits(shard_file_bytes=64 * 1024)
BOUND_S = 0.5  # per input; the real figure is a few ms

_FRAGMENTS = [
    GOOD, alias_bomb(3), "[", "{", "]", "}", ":", "- ", "&a ", "*a ", "<<: *a\n", "!!python/object ",
    "!!binary ", "${DGW_X}", "${HOME}", "$${X}", "${", "\t", "\n", "  ", "proxy_config:",
    "public_listeners:", "mode: grpc", "path: 8080", "container_dals:", "wiring:", "? ", "|\n",
    "'", '"', "\x00", "\ufeff", "999999999999999999999", "-1", "null", "~", "%YAML 1.1\n", "---\n",
]

texts = st.one_of(
    st.text(max_size=400),
    st.lists(st.sampled_from(_FRAGMENTS), max_size=40).map("".join),
    st.builds(lambda a, b: GOOD[:a] + b, st.integers(0, len(GOOD)), st.text(max_size=40)),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(texts)
def test_the_loader_answers_a_config_error_or_a_config(text: str) -> None:
    started = time.perf_counter()
    try:
        loaded = load_shard_checked(text, "fuzz.yaml", {"DGW_X": "1"}, limits=LIMITS)
    except ConfigError as e:
        assert e.problems and all(len(str(p)) < 1_500 for p in e.problems)
    else:
        assert isinstance(loaded.config, ShardFile)
    assert time.perf_counter() - started < BOUND_S
