"""Package boundaries, read from the source with ``ast`` (fast, nothing imported):

- the control plane and the agent (``xds_server``, ``sidecar``) never import the CLI,
  the benchmarks or the test helpers;
- ``common`` imports nothing from the project (both programs build on it);
- tests import nothing from ``bench`` except the tests of the benchmarks (``tests/bench``);
- the agent's pure plan loads none of the I/O libraries (issue #8);
- DALs (``dals/``) are applications on the platform: they import nothing of the project
  outside ``dals`` (their images hold only ``dals/``), and the platform nothing of them
  (issue #18); the benchmarks and tests may use a DAL's client.

Imports inside functions count too: a lazy import is still a dependency. A real import
of each program in a subprocess catches what the scan cannot see.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tuple(sorted(init.parent.name for init in ROOT.glob("*/__init__.py")))


def _sources(package: str) -> list[Path]:
    return sorted(p for p in (ROOT / package).rglob("*.py") if ".venv" not in p.parts)


def _module_of(path: Path, root: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, root: Path = ROOT) -> list[tuple[int, str]]:
    """(line, absolute module) of every import in ``path``, relative ones resolved."""
    tree = ast.parse(path.read_text(), str(path))
    package = _module_of(path, root).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            found.append((node.lineno, module))
    return found


def _violations(packages: list[Path], forbidden: tuple[str, ...]) -> list[str]:
    return [
        f"{path.relative_to(ROOT)}:{line} imports {module}"
        for path in packages
        for line, module in _imports(path)
        if module.split(".")[0] in forbidden
    ]


@pytest.mark.parametrize("package", ["xds_server", "sidecar"])
def test_the_programs_never_import_the_cli_the_benchmarks_or_test_helpers(package: str) -> None:
    assert _violations(_sources(package), ("dgw", "bench", "testkit", "tests")) == []


def test_common_imports_nothing_from_the_project() -> None:
    assert {"common", "xds_server", "sidecar", "tests"} <= set(PROJECT)
    assert _violations(_sources("common"), tuple(p for p in PROJECT if p != "common")) == []


PLATFORM = ("xds_server", "sidecar", "common", "envoy_proxy", "dgw", "dgw_api", "testkit")


def test_dals_import_nothing_from_the_platform() -> None:
    assert "dals" in PROJECT
    assert _violations(_sources("dals"), tuple(p for p in PROJECT if p != "dals")) == []


@pytest.mark.parametrize("package", PLATFORM)
def test_the_platform_never_imports_a_dal(package: str) -> None:
    assert _violations(_sources(package), ("dals",)) == []


def test_importing_the_kv_dal_loads_nothing_of_the_platform() -> None:
    modules = [_module_of(p, ROOT) for p in _sources("dals") if p.name != "__main__.py"]
    assert _loaded_by(modules, tuple(p for p in PROJECT if p != "dals")) == []


def test_tests_import_bench_only_in_the_tests_of_the_benchmarks() -> None:
    outside = [p for p in _sources("tests") if "bench" not in p.relative_to(ROOT / "tests").parts[:1]]
    assert _violations(outside, ("bench",)) == []


def test_the_scan_sees_relative_and_lazy_imports(tmp_path: Path) -> None:
    """The checks above would pass vacuously if the scan missed imports."""
    module = tmp_path / "tests" / "support" / "helper.py"
    module.parent.mkdir(parents=True)
    module.write_text(
        "from . import procs\n"
        "from ..bench import test_idle\n"
        "def lazy():\n"
        "    import bench.fleet\n"
        "    from bench.procs import free_port\n"
    )
    assert [m for _, m in _imports(module, tmp_path)] == [
        "tests.support", "tests.bench", "bench.fleet", "bench.procs",
    ]


def _loaded_by(modules: list[str], forbidden: tuple[str, ...]) -> list[str]:
    """The top-level packages among ``forbidden`` that freshly importing ``modules`` loads."""
    probe = (
        f"import importlib, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & {set(forbidden)!r}))"
    )
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    loaded: list[str] = ast.literal_eval(done.stdout.strip())
    return loaded


@pytest.mark.parametrize("package", ["xds_server", "sidecar", "common"])
def test_importing_a_program_loads_none_of_the_cli_benchmarks_or_test_helpers(package: str) -> None:
    """What the source scan cannot see (an import by name at run time), a real import of
    every module of the package does."""
    modules = [_module_of(p, ROOT) for p in _sources(package) if p.name != "__main__.py"]
    assert _loaded_by(modules, ("dgw", "bench", "testkit", "tests")) == []


def test_the_plan_is_pure_and_loads_no_io_library() -> None:
    assert _loaded_by(["sidecar.plan"], ("docker", "grpc", "aiohttp")) == []
