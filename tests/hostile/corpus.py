"""The hostile inputs of issue #9, one constant each, shared by the tests."""

from __future__ import annotations

GOOD = """
proxy_config:
  public_listeners:
    api: {mode: http, path: 18080}
container_dals:
  kv: {container_listeners: {api: 18081}}
"""

# 2,000 nested `[` in 4 KB: PyYAML builds documents recursively.
NESTED = "proxy_config: " + "[" * 2000 + "]" * 2000 + "\n"


def alias_bomb(levels: int = 8) -> str:
    """The 487-byte billion laughs (levels=8): each anchor is nine of the previous,
    ~4·10^7 values once expanded, used where an enum value goes."""
    lines = ["x-a0: &a0 [lol,lol,lol,lol,lol,lol,lol,lol,lol]"]
    for i in range(1, levels):
        prev = f"*a{i - 1}"
        lines.append(f"x-a{i}: &a{i} [{','.join([prev] * 9)}]")
    lines.append("proxy_config:")
    lines.append("  public_listeners:")
    lines.append(f"    api: {{mode: *a{levels - 1}, path: 18080}}")
    return "\n".join(lines) + "\n"


# Values and keys that would make a message huge if quoted whole.
HUGE_VALUE = GOOD.replace("mode: http", "mode: " + "x" * 200_000)
HUGE_KEY = GOOD + "? " + ("k" * 200_000) + "\n: 1\n"  # an explicit key: no length limit

SECRET_SHARD = """
proxy_config:
  public_listeners:
    db: {mode: tcp, path: 15432}
network_dals:
  pg:
    listeners: {db: "postgresql://app:${DGW_DB_PASSWORD}@127.0.0.1:5432"}
    mode: static
"""
SECRET = "s3cr3t-Pa55word"
