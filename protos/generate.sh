#!/usr/bin/env bash
# Regenerate the Python code of every API in protos/ (the generated files are committed,
# so users never need grpcio-tools): dgw_api/v1/ from protos/dgw_api/v1/*.proto (the
# platform's own API), dals/kv/v1/ from protos/dals/kv/v1/*.proto (the Key-Value
# DAL's, importable by the DAL and its clients without the platform) and etcd_api/ from
# protos/etcd_api/*.proto (etcd's v3 API, the config store's client; update.py there
# refreshes them from Debian's etcd). grpcio-tools pins its own protobuf, hence the
# throw-away venv.
#
# The DAL migration contract, protos/dgw/migration/v1/migration.proto, is generated
# twice from the one file: for the platform into dgw_api/migration/v1/ and for the
# Key-Value DAL into dals/kv/migration/v1/ (a DAL imports nothing of the platform). The
# DAL's copy has its proto package renamed (dals.kv.migration.v1): both copies may load
# in one process (the tests), and one descriptor pool refuses a name defined twice. The
# wire format does not carry the package; the DAL serves the contract's service name.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=$(mktemp -d)
trap 'rm -rf "$venv"' EXIT
python3 -m venv "$venv"
"$venv/bin/pip" install -q "grpcio-tools==1.85.1"  # the version dgw_api was made with
for api in dgw_api/v1 dals/kv/v1 etcd_api; do
  "$venv/bin/python" -m grpc_tools.protoc -Iprotos --python_out=. --grpc_python_out=. --pyi_out=. "protos/$api"/*.proto
done
contract=$(mktemp -d)
trap 'rm -rf "$venv" "$contract"' EXIT
mkdir -p "$contract/dgw_api/migration/v1" "$contract/dals/kv/migration/v1"
cp protos/dgw/migration/v1/migration.proto "$contract/dgw_api/migration/v1/"
sed 's/^package dgw\.migration\.v1;/package dals.kv.migration.v1;/' protos/dgw/migration/v1/migration.proto \
  > "$contract/dals/kv/migration/v1/migration.proto"
for api in dgw_api/migration/v1 dals/kv/migration/v1; do
  "$venv/bin/python" -m grpc_tools.protoc -I"$contract" --python_out=. --pyi_out=. "$contract/$api/migration.proto"
done
