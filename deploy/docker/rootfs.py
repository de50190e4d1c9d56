"""Assemble a minimal root filesystem for a DAL image from this machine.

No registry is reachable, so the image is made of files already here: the Python
interpreter this script runs under (its base install, not the venv), its standard
library, the distributions the DALs import (found through their metadata,
with their dependencies), the project's ``dals`` package, ``/bin/sh`` (Docker's
CMD-SHELL health checks need it) and every shared library ``ldd`` says they load.

    python deploy/docker/rootfs.py ROOT [DIST ...]     (default DISTs: aiohttp grpcio)
"""

from __future__ import annotations

import importlib.metadata as md
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from packaging.requirements import Requirement

PROJECT = Path(__file__).resolve().parents[2]
# What the sample DAL imports; build-dal-image.sh names the KV DAL's (these, protobuf,
# asyncpg, redis, hiredis, uvloop, pydantic, PyYAML).
DEFAULT_DISTS = ("aiohttp", "grpcio")
# Parts of the standard library a server never imports; leaving them out keeps the
# image (copied whole per container by the vfs storage driver) small.
STDLIB_SKIP = {
    "test", "tests", "idlelib", "tkinter", "turtledemo", "ensurepip", "lib2to3",
    "site-packages", "pydoc_data", "distutils", "unittest", "venv",
}
# Extension modules a DAL never needs that drag in X11, Tcl/Tk, curses, NIS (the KV DAL's
# SQLite engine needs _sqlite3).
DYNLOAD_SKIP = (
    "_tkinter", "_test", "xxlimited", "_xxtest", "_ctypes_test", "xxsubtype",
    "_curses", "readline", "nis", "_dbm", "_gdbm", "ossaudiodev",
)
_LDD_PATH = re.compile(r"(?:=>\s*)?(/\S+)\s+\(0x")


def _copy(src: Path, root: Path, dest: str | None = None) -> Path:
    target = root / (dest or str(src)).lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    if not target.exists():
        shutil.copy2(os.path.realpath(src), target)
    return target


def _stdlib(root: Path) -> Path:
    base = Path(sys.base_prefix)
    ver = f"python{sys.version_info.major}.{sys.version_info.minor}"
    src = base / "lib" / ver
    dest = root / "usr/local/lib" / ver

    def ignore(directory: str, names: list[str]) -> set[str]:
        skip = set()
        top = Path(directory) == src
        for n in names:
            if (top and (n in STDLIB_SKIP or n.startswith("config-"))) or n.endswith((".opt-1.pyc", ".opt-2.pyc", ".exe")) or n.startswith(DYNLOAD_SKIP):
                skip.add(n)
        return skip

    shutil.copytree(src, dest, ignore=ignore, symlinks=False, dirs_exist_ok=True)
    exe = Path(os.path.realpath(Path(sys.base_prefix) / "bin" / ver))
    _copy(exe, root, f"/usr/local/bin/{ver}")
    for alias in ("python3", "python"):
        link = root / "usr/local/bin" / alias
        if not link.exists():
            link.symlink_to(ver)
    libpython = base / "lib" / f"lib{ver}.so.1.0"
    if libpython.exists():
        # /usr/lib is on the loader's default path; /usr/local/lib is not.
        _copy(libpython, root, f"/usr/lib/{libpython.name}")
    return dest


def _dists(names: tuple[str, ...]) -> list[md.Distribution]:
    seen: dict[str, md.Distribution] = {}
    todo = list(names)
    while todo:
        name = todo.pop()
        key = re.sub(r"[-_.]+", "-", name).lower()
        if key in seen:
            continue
        dist = md.distribution(name)
        seen[key] = dist
        for spec in dist.requires or []:
            req = Requirement(spec)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return list(seen.values())


def _site_packages(root: Path, stdlib: Path, names: tuple[str, ...]) -> list[str]:
    dest = stdlib / "site-packages"
    copied = []
    for dist in _dists(names):
        for f in dist.files or []:
            src = Path(dist.locate_file(f))
            if f.parts[0] == ".." or not src.is_file():
                continue
            target = dest / f
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, target)
        copied.append(f"{dist.metadata['Name']}=={dist.version}")
    return copied


def _project(root: Path) -> None:
    def ignore(directory: str, names: list[str]) -> set[str]:
        return {n for n in names if n == "__pycache__" or n.endswith(".pyc")}

    shutil.copytree(PROJECT / "dals", root / "app/dals", ignore=ignore, dirs_exist_ok=True)


def _shell(root: Path) -> None:
    sh = Path(shutil.which("dash") or "/bin/sh")
    _copy(sh, root, "/bin/sh")


def _shared_libraries(root: Path) -> int:
    """Copy what ``ldd`` resolves for every ELF file in ``root``, until closed."""
    done: set[str] = set()
    lib_dirs = ("usr/lib", "lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu", "lib64")
    while True:
        present = {p.name for d in lib_dirs if (root / d).is_dir() for p in (root / d).iterdir()}
        missing = set()
        for path in root.rglob("*"):
            if path.is_symlink() or not path.is_file() or str(path) in done:
                continue
            with open(path, "rb") as f:
                if f.read(4) != b"\x7fELF":
                    continue
            done.add(str(path))
            out = subprocess.run(["ldd", str(path)], capture_output=True, text=True).stdout
            for m in _LDD_PATH.finditer(out):
                lib = m.group(1)
                # ldd answers with host paths (e.g. libpython under the pyenv prefix
                # via RUNPATH); one copy on the loader's path is enough.
                if not (root / lib.lstrip("/")).exists() and Path(lib).name not in present:
                    missing.add(lib)
        if not missing:
            return len(done)
        for lib in missing:
            _copy(Path(lib), root)


def _etc(root: Path) -> None:
    (root / "etc").mkdir(exist_ok=True)
    (root / "etc/nsswitch.conf").write_text("hosts: files dns\n")
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (root / "etc/group").write_text("root:x:0:\n")
    for d in ("tmp", "root", "proc", "sys", "dev"):
        (root / d).mkdir(exist_ok=True)
    (root / "tmp").chmod(0o1777)


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    root = Path(argv[0])
    root.mkdir(parents=True, exist_ok=True)
    stdlib = _stdlib(root)
    dists = _site_packages(root, stdlib, tuple(argv[1:]) or DEFAULT_DISTS)
    _project(root)
    _shell(root)
    elves = _shared_libraries(root)
    _etc(root)
    print(f"rootfs: {root} ({len(dists)} distributions: {' '.join(sorted(dists))}; "
          f"{elves} ELF files)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
