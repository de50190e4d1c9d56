#!/usr/bin/env bash
# Regenerate dgw_api/v1/*_pb2*.py from protos/dgw_api/v1/*.proto (the generated files are
# committed, so users never need grpcio-tools). grpcio-tools pins its own protobuf,
# hence the throw-away venv.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=$(mktemp -d)
trap 'rm -rf "$venv"' EXIT
python3 -m venv "$venv"
"$venv/bin/pip" install -q grpcio-tools
"$venv/bin/python" -m grpc_tools.protoc -Iprotos --python_out=. --grpc_python_out=. --pyi_out=. protos/dgw_api/v1/*.proto
