"""The translator's golden cases: ``testdata/in/NAME.yaml`` → ``testdata/out/NAME.*``.

A case's outputs are the YAML of each non-empty resource type
(``NAME.{listeners,routes,clusters,endpoints}.yaml``, as ``dgw render`` prints them)
or, for a config that must be refused, ``NAME.error.txt``. ``NAME.reports.yaml``
next to an input lists sidecar reports; its endpoints then replace the empty ones.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from dgw_api.v1 import gateway_pb2
from xds_server.config import ConfigError, load_shard_text
from xds_server.resources import (
    CLUSTER,
    ENDPOINT,
    LISTENER,
    ROUTE,
    SHORT_NAMES,
    Resources,
)
from xds_server.translate import (
    TranslateOptions,
    build_ir,
    endpoints_for,
    render_yaml,
    to_resources,
)

TESTDATA = Path(__file__).parent / "testdata"
IN = TESTDATA / "in"
OUT = TESTDATA / "out"
TYPES = (LISTENER, ROUTE, CLUSTER, ENDPOINT)
_REPORTS = ".reports.yaml"


def case_names() -> list[str]:
    return sorted(
        p.name.removesuffix(".yaml") for p in IN.glob("*.yaml") if not p.name.endswith(_REPORTS)
    )


def golden_files(name: str) -> dict[str, Path]:
    """The stored outputs of one case, by file name."""
    return {p.name: p for p in OUT.glob(f"{name}.*")}


def load_reports(path: Path) -> list[gateway_pb2.Endpoint]:
    return [
        gateway_pb2.Endpoint(
            dal=r["dal"],
            listener=r["listener"],
            address=r["address"],
            port=r["port"],
            health=gateway_pb2.Health.Value(r["health"]),
        )
        for r in yaml.safe_load(path.read_text())
    ]


def render_case(name: str) -> dict[str, str]:
    """What the current code makes of one case, by output file name."""
    file = f"{name}.yaml"
    try:
        cfg = load_shard_text((IN / file).read_text(), file, env={})
        gateway = build_ir(cfg, TranslateOptions(file=file))
    except ConfigError as e:
        return {f"{name}.error.txt": f"{e}\n"}
    by_type = dict(to_resources(gateway).by_type)
    reports = IN / f"{name}{_REPORTS}"
    if reports.exists():
        by_type[ENDPOINT] = endpoints_for(gateway, load_reports(reports))
    return {
        f"{name}.{SHORT_NAMES[t]}.yaml": render_yaml(Resources({t: by_type[t]}))
        for t in TYPES
        if by_type.get(t)
    }
