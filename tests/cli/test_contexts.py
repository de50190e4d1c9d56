"""Issue 22 (items 1, 7, 8, 9) and issue 17 item 3, without a gateway: the real ``dgw``
in a child process, from a HOME of its own seeded with a stale ``~/.local/share/dgw/``.

A loopback port is anyone's: the fake admin API here runs as ``nobody`` and writes down
every request it gets, so a test sees whether a token reached it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from testkit.ports import free_port
from testkit.wait import wait_until
from tests.support.procs import port_open

from .home import STALE_TOKEN, Home, stale_home
from .run import EXAMPLES

pytestmark = pytest.mark.slow  # each test runs dgw (and an impostor) as child processes

NOBODY = 65534
FAKE_ADMIN = """
import http.server, json, os, socketserver, sys

class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        print(json.dumps({"path": self.path, "authorization": self.headers.get("Authorization")}), flush=True)
        body = b'{"shards": {}, "nodes": []}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

class Unix(socketserver.UnixStreamServer):
    def get_request(self):
        request, _ = super().get_request()
        return request, ("unix", 0)

where = sys.argv[1]
server = Unix(where, Handler) if where.startswith("/") else http.server.HTTPServer(("127.0.0.1", int(where)), Handler)
print("listening", flush=True)
server.serve_forever()
"""


class Fake:
    """An admin API impostor started as ``nobody``: every request it got, with its token."""

    def __init__(self, where: str, log: Path) -> None:
        self.log = log
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(["/usr/bin/python3", "-c", FAKE_ADMIN, where], stdout=out,
                                         stderr=subprocess.STDOUT, user=NOBODY, group=NOBODY, cwd="/")  # fmt: skip
        wait_until(lambda: "listening" in log.read_text() or self.proc.poll() is not None, 15, what="the fake")
        assert self.proc.poll() is None, log.read_text()

    def requests(self) -> list[dict[str, str | None]]:
        return [json.loads(line) for line in self.log.read_text().splitlines() if line.startswith("{")]

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(10)


@pytest.fixture
def home(tmp_path: Path) -> Home:
    return stale_home(tmp_path)


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[tuple[Fake, str]]:
    port = free_port()
    fake = Fake(str(port), tmp_path / "fake.log")
    try:
        yield fake, f"http://127.0.0.1:{port}"
    finally:
        fake.stop()


# --- item 7: options anywhere, typos ----------------------------------------------------


def test_a_mistyped_command_is_answered_with_the_close_one(home: Home) -> None:
    run = home.dgw("statsu")
    assert run.returncode == 2
    assert "invalid choice: 'statsu': did you mean 'stats' or 'status'?" in run.stderr


def test_an_unknown_option_gets_the_sub_command_s_usage_and_the_option_meant(home: Home) -> None:
    run = home.dgw("status", "--shrd", "demo")
    assert run.returncode == 2
    assert run.stderr.startswith("usage: dgw status "), run.stderr
    assert "dgw status: error: unrecognized arguments: --shrd demo: did you mean '--shard'?" in run.stderr
    nested = home.dgw("token", "create", "--rle", "admin", "--name", "x")
    assert nested.stderr.startswith("usage: dgw token create "), nested.stderr
    assert "did you mean '--role'?" in nested.stderr


def test_global_options_go_before_or_after_the_command(home: Home, fake: tuple[Fake, str]) -> None:
    impostor, url = fake
    for words in (["--server", url, "status"], ["status", "--server", url], ["-o", "json", "status", "--server", url],
                  ["token", "--server", url, "list", "-o", "yaml"]):
        run = home.dgw(*words, DGW_TOKEN="dgw_given_by_the_user")
        assert run.returncode == 0, (words, run.stderr)
    assert json.loads(home.dgw("status", "--server", url, "-o", "json").stdout) == {"shards": {}, "nodes": []}
    assert [r["path"] for r in impostor.requests()][:4] == ["/v1/status", "/v1/status", "/v1/status", "/v1/tokens"]


# --- item 1 and issue 17 item 3: a token found on disk stays with its server --------------


def test_no_token_found_on_disk_reaches_a_loopback_impostor(home: Home, fake: tuple[Fake, str]) -> None:
    impostor, url = fake
    # The stale data dir's token, through a context as `dgw config set-context --data-dir`
    # makes it; its server is gone and the impostor holds its port.
    assert home.dgw("config", "set-context", "old", "--server", url, "--data-dir", str(home.stale)).returncode == 0

    # dgw talks to the context's server only through the socket in the server's own
    # directory, which nobody answers: said, and nothing is sent to the port.
    for run in (home.dgw("get", "shards"), home.dgw("get", "shards", "--server", url)):
        assert run.returncode == 1
        assert "the server of context old is not running: nothing answers on its admin socket" in run.stderr
    assert impostor.requests() == []

    # A --server that is no context's server gets no context's token; nor does one
    # named with no context at all.
    assert home.dgw("config", "delete-context", "old").returncode == 0
    assert home.dgw("config", "set-context", "other", "--server", "http://127.0.0.1:1",
                    "--data-dir", str(home.stale)).returncode == 0  # fmt: skip
    named = home.dgw("get", "shards", "--server", url, "-v")
    assert named.returncode == 0, named.stderr
    assert "context other (the current context) not used: its server is http://127.0.0.1:1" in named.stderr
    assert home.dgw("config", "delete-context", "other").returncode == 0
    assert home.dgw("get", "shards", "--server", url).returncode == 0
    assert [r["authorization"] for r in impostor.requests()] == [None, None]
    assert STALE_TOKEN not in impostor.log.read_text()


def test_a_token_file_without_a_way_to_prove_the_server_is_not_sent(home: Home, tmp_path: Path,
                                                                   fake: tuple[Fake, str]) -> None:  # fmt: skip
    impostor, url = fake
    token = tmp_path / "elsewhere.token"
    token.write_text(STALE_TOKEN)
    assert home.dgw("config", "set-context", "hand", "--server", url, "--token-file", str(token)).returncode == 0

    run = home.dgw("status")

    assert run.returncode == 1
    assert "context hand: its token is not sent to " + url in run.stderr
    assert "any local user can listen on a loopback port" in run.stderr
    assert impostor.requests() == []


def test_a_socket_held_by_another_user_gets_no_token(home: Home) -> None:
    """An admin socket answered by ``nobody`` while root's token file names the server."""
    public = Path(tempfile.mkdtemp(prefix="dgw-ctx-"))
    try:
        os.chown(public, NOBODY, NOBODY)
        impostor = Fake(str(public / "admin.sock"), public.parent / f"{public.name}.log")
        try:
            assert home.dgw("config", "set-context", "planted", "--server", "http://127.0.0.1:1",
                            "--admin-socket", str(public / "admin.sock"),
                            "--token-file", str(home.stale / "admin.token")).returncode == 0  # fmt: skip
            run = home.dgw("get", "shards")
            assert run.returncode == 1
            assert f"runs as uid {NOBODY}, not as uid 0, who owns the token: its token is not sent" in run.stderr
            assert "context planted" in run.stderr
            assert impostor.requests() == []
        finally:
            impostor.stop()
    finally:
        shutil.rmtree(public, ignore_errors=True)
        Path(f"{public}.log").unlink(missing_ok=True)


def test_without_a_context_the_stale_data_dir_is_not_guessed_from(home: Home) -> None:
    """No current context, a stale local data dir: its dead socket is said, its token
    is never sent to the default port (nothing listens there anyway in this test)."""
    run = home.dgw("status", "-v")
    assert run.returncode == 1
    assert f"dgw: the local default server: {home.stale} (no context)" in run.stderr
    assert "the server of the local default server is not running" in run.stderr


# --- contexts -----------------------------------------------------------------------------


def test_contexts_are_listed_used_viewed_and_deleted(home: Home) -> None:
    assert home.dgw("config", "current-context").returncode == 1
    assert home.dgw("config", "set-context", "prod", "--server", "https://gw.example.net:18001",
                    "--token", "dgw_secret_inline").returncode == 0  # fmt: skip
    assert home.dgw("config", "set-context", "lab", "--server", "127.0.0.1:18101").returncode == 0
    assert home.dgw("config", "current-context").stdout == "prod\n"  # the first one

    assert home.dgw("config", "use-context", "lab").returncode == 0
    listed = home.dgw("config", "get-contexts").stdout.splitlines()
    assert listed[0].split() == ["CURRENT", "NAME", "SERVER", "TOKEN", "CA", "INSTANCE"]
    assert listed[1].split()[:2] == ["*", "lab"] and listed[2].split()[:3] == ["prod", "https://gw.example.net:18001", "inline"]
    view = home.dgw("config", "view")
    assert "dgw_secret_inline" not in view.stdout
    assert yaml.safe_load(view.stdout)["contexts"]["prod"]["token"] == "REDACTED"
    assert (home.config.stat().st_mode & 0o777) == 0o600

    missing = home.dgw("config", "use-context", "nope")
    assert missing.returncode == 1 and "no context 'nope'" in missing.stderr and "lab, prod" in missing.stderr
    assert home.dgw("--context", "nope", "status").stderr.startswith("dgw status: --context nope: no such context")
    assert home.dgw("config", "delete-context", "lab").returncode == 0
    assert home.dgw("config", "current-context").returncode == 1


# --- items 8 and 9: messages that quote, reference text that is true --------------------


def test_config_errors_quote_what_was_written_and_point_at_the_faulty_line(home: Home, tmp_path: Path) -> None:
    shard = (EXAMPLES / "runtime" / "kv-shadow-thrift-to-cql.yaml").read_text()
    assert "{mode: shadow, target: cql}" in shard
    bad = tmp_path / "bad.yaml"
    bad.write_text(shard.replace("{mode: shadow, target: cql}", "{mode: split, target: cql, percent: 150}"))
    syntax = tmp_path / "syntax.yaml"
    syntax.write_text("proxy_config:\n  public_listeners:\n    api: {mode: http, path: 8080\n"
                      "container_dals:\n  a:\n    image x\n    container_listeners: {api: 1}\n")
    keyless = tmp_path / "keyless.yaml"
    keyless.write_text("container_dals:\n  a:\n    image x\n    container_listeners: {api: 1}\n")

    run = home.dgw("validate", str(bad), str(syntax), str(keyless))

    assert run.returncode == 1
    assert "percent: 150 is more than 100, the most allowed" in run.stdout
    assert f"{syntax}:line 3: not valid YAML: the '{{' opened on this line is not closed" in run.stdout
    assert f"{keyless}:line 3: not valid YAML: 'image x' needs a ':' after its key" in run.stdout


def test_reference_text_says_what_tls_creds_and_authz_do(home: Home) -> None:
    text = home.dgw("schema", "--markdown").stdout
    assert "until TLS lands" not in text and "until authorization lands" not in text
    assert "requires a client certificate" in text and "deploy_desires.consumers" in text


def test_the_fake_runs_as_another_user(fake: tuple[Fake, str]) -> None:
    """The impostor above is another local user's program, as in the issue."""
    impostor, url = fake
    status = Path(f"/proc/{impostor.proc.pid}/status").read_text()
    assert f"Uid:\t{NOBODY}" in status
    assert port_open(int(url.rsplit(":", 1)[1]))
