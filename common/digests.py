"""The digest of a process DAL's build: the files its command runs.

``dgw artifact push dals/NAME --files ...`` (or ``--command``) records it, and the
sidecar's process runtime computes it again before it runs the command, so a file
changed after the push is refused. Both sides call these functions, so they agree.

A command's files are every word of it that names a regular file: the first word as
the shell would find it (``PATH``), the others as paths (``/apps/kv/start.sh``,
``dal.py``). The digest is SHA-256 over each file's own SHA-256, in the command's
order, so the same files in the same roles always give the same digest.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

_CHUNK = 1 << 20


class DigestError(OSError):
    """A file of the build cannot be read; the message names it."""


def command_files(argv: Sequence[str], path: str | None = None) -> list[Path]:
    """The files ``argv`` runs or reads by name, in its order."""
    files: list[Path] = []
    for i, word in enumerate(argv):
        found = shutil.which(word, path=path) if i == 0 and "/" not in word else None
        candidate = Path(found) if found else Path(word)
        if (found or "/" in word or i > 0) and candidate.is_file():
            files.append(candidate.resolve())
    return files


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
    except OSError as e:
        raise DigestError(f"cannot read {path}: {e.strerror or e}") from None
    return h.hexdigest()


def files_digest(paths: Sequence[Path]) -> str:
    """``sha256:<hex>`` over the files' own digests, in order."""
    return DigestCache().files_digest(paths)


class DigestCache:
    """Digests of files that have not changed (same size, mtime and inode) are not
    read again: a reconcile pass every few seconds must not re-hash an interpreter."""

    def __init__(self) -> None:
        self._known: dict[Path, tuple[tuple[int, int, int], str]] = {}

    def files_digest(self, paths: Sequence[Path]) -> str:
        if not paths:
            raise DigestError("no files to take a digest of")
        h = hashlib.sha256()
        for p in paths:
            try:
                st = os.stat(p)
            except OSError as e:
                raise DigestError(f"cannot read {p}: {e.strerror or e}") from None
            key = (st.st_size, st.st_mtime_ns, st.st_ino)
            known = self._known.get(p)
            if known is None or known[0] != key:
                known = (key, file_digest(p))
                self._known[p] = known
            h.update(known[1].encode() + b"\n")
        return "sha256:" + h.hexdigest()
