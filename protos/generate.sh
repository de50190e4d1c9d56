#!/usr/bin/env bash
# Regenerate the committed Python code of our gRPC APIs (users never need grpcio-tools):
#   dgw_api/v1/*_pb2*.py   from protos/dgw_api/v1/*.proto  (the sidecar ↔ xds_server API)
#   etcd_api/*_pb2*.py     from protos/etcd_api/*.proto    (etcd's v3 API, the config store's
#                          client; protos/etcd_api/update.py refreshes those from Debian's etcd)
# grpcio-tools pins its own protobuf, hence the throw-away venv.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=$(mktemp -d)
trap 'rm -rf "$venv"' EXIT
python3 -m venv "$venv"
"$venv/bin/pip" install -q grpcio-tools
"$venv/bin/python" -m grpc_tools.protoc -Iprotos --python_out=. --grpc_python_out=. --pyi_out=. protos/dgw_api/v1/*.proto
"$venv/bin/python" -m grpc_tools.protoc -Iprotos --python_out=. --grpc_python_out=. --pyi_out=. protos/etcd_api/*.proto
