"""Refresh protos/etcd_api/*.proto from Debian's etcd source package (the same etcd
release as the `etcd-server` the tests and deploy/ha run), stripped for grpcio-tools.

etcd's .proto files carry gogoproto options and grpc-gateway annotations whose own
.proto files we neither have nor need: they only steer Go code generation and the
JSON gateway. Stripping them changes no message, field number or service name, so the
wire format is etcd's. Imports are renamed to this package's paths.

    python3 protos/etcd_api/update.py    # then protos/generate.sh

Needs `apt-get download` (Debian); writes only protos/etcd_api/*.proto.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from pathlib import Path

PACKAGE = "golang-etcd-server-dev"
SOURCE = "usr/share/gocode/src/go.etcd.io/etcd"
# Our file name ← etcd's path; rpc.proto imports the other two.
FILES = {
    "kv.proto": "mvcc/mvccpb/kv.proto",
    "auth.proto": "auth/authpb/auth.proto",
    "rpc.proto": "etcdserver/etcdserverpb/rpc.proto",
}
IMPORTS = {
    "etcd/mvcc/mvccpb/kv.proto": "etcd_api/kv.proto",
    "etcd/auth/authpb/auth.proto": "etcd_api/auth.proto",
}
HERE = Path(__file__).resolve().parent


def strip(text: str) -> str:
    text = re.sub(r'^import "(gogoproto/gogo|google/api/annotations)\.proto";\n', "", text, flags=re.M)
    text = re.sub(r"^option \(gogoproto\.[a-z_]+\) = \w+;\n", "", text, flags=re.M)
    text = _drop_http_options(text)
    # Field options: `[(gogoproto.nullable) = false]`, possibly several in one bracket.
    text = re.sub(r"\s*\[\(gogoproto\.[^\]]*\]", "", text)
    # An rpc left with an empty body `{\n  }` becomes `{}`.
    text = re.sub(r"\{\s*\}", "{}", text)
    for old, new in IMPORTS.items():
        text = text.replace(f'import "{old}";', f'import "{new}";')
    if "gogoproto" in text or "google.api" in text:
        raise SystemExit("a gogoproto or google.api option was left: update strip()")
    return text


def _drop_http_options(text: str) -> str:
    """``option (google.api.http) = { ... };`` inside an rpc (its braces may nest, for
    ``additional_bindings``): keep the rpc, drop the option."""
    opening = re.compile(r"\s*option \(google\.api\.http\) = \{")
    while (m := opening.search(text)) is not None:
        depth, i = 1, m.end()
        while depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        end = text.index(";", i) + 1
        text = text[: m.start()] + text[end:]
    return text


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["apt-get", "download", PACKAGE], cwd=tmp, check=True)
        deb = next(Path(tmp).glob(f"{PACKAGE}_*.deb"))
        version = deb.name.split("_")[1]
        subprocess.run(["dpkg-deb", "-x", deb.name, "x"], cwd=tmp, check=True)
        root = Path(tmp) / "x" / SOURCE
        for ours, theirs in FILES.items():
            header = (f"// etcd's {theirs} (Debian {PACKAGE} {version}, Apache-2.0),\n"
                      "// stripped of gogoproto and grpc-gateway options by update.py.\n")
            (HERE / ours).write_text(header + strip((root / theirs).read_text()))
            print(f"protos/etcd_api/{ours} ← {theirs} ({version})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
