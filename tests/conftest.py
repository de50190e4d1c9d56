"""Shared test options: ``--update-golden`` rewrites golden files instead of comparing.

The user's own ``dgw`` files are never touched by a test: the session points the XDG
config, state and data directories (contexts, ``dgw up`` instances, the default data
dir) at a scratch directory of its own, which every child inherits. A test that needs
a HOME of its own sets HOME and drops these (``tests/cli/home.py``).

Every process a test starts inherits ``DGW_TEST_SESSION``; at the end of the run any
that is still alive (a test that failed to clean up) is listed and killed, so a leak
can neither hold the CI's output open nor disturb the next run. Only processes that
carry this run's tag are touched.
"""

import os
import shutil
import signal
import tempfile
import uuid
from pathlib import Path

SESSION_TAG = "DGW_TEST_SESSION"
XDG_DIRS = ("XDG_CONFIG_HOME", "XDG_STATE_HOME", "XDG_DATA_HOME")
_scratch: list[Path] = []


def pytest_addoption(parser):
    parser.addoption(
        "--update-golden",
        action="store_true",
        help="rewrite the translator's golden output files from the current code",
    )


def pytest_configure(config):
    if config.getoption("--update-golden"):
        os.environ["DGW_UPDATE_GOLDEN"] = "1"


def pytest_sessionstart(session):
    os.environ[SESSION_TAG] = f"{os.getpid()}-{uuid.uuid4().hex}"
    scratch = Path(tempfile.mkdtemp(prefix="dgw-test-home-"))
    _scratch.append(scratch)
    for name in XDG_DIRS:
        os.environ[name] = str(scratch / name.lower())


def _tagged_processes(tag: str) -> list[tuple[int, str]]:
    marker = f"{SESSION_TAG}={tag}".encode()
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            if marker in (proc / "environ").read_bytes().split(b"\0"):
                cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                found.append((int(proc.name), cmd.strip()[:160]))
        except OSError:
            continue  # gone, or not ours to read
    return found


def pytest_sessionfinish(session, exitstatus):
    _kill_leftovers(session)
    for scratch in _scratch:
        shutil.rmtree(scratch, ignore_errors=True)


def _kill_leftovers(session):
    tag = os.environ.get(SESSION_TAG)
    if not tag:
        return
    leftovers = _tagged_processes(tag)
    for pid, _ in leftovers:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    if leftovers:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        lines = [f"  pid {pid}: {cmd}" for pid, cmd in leftovers]
        message = "processes left running by the tests (killed now):\n" + "\n".join(lines)
        if reporter:
            reporter.write_line(message, yellow=True)
