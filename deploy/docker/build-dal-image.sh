#!/usr/bin/env bash
# Build a DAL image from files on this host: no registry, no pulls.
#   build-dal-image.sh [--force] [--dal sample|kv] [IMAGE]
# --dal sample (default) makes dgw-sample-dal:test, running `python3 -m dals.sample`;
# --dal kv makes dgw-kv:test, the Key-Value DAL (`python3 -m dals.kv serve`).
# deploy/docker/rootfs.py assembles a root filesystem (Python, its stdlib, the
# distributions dals/ imports, the project's dals/ package, /bin/sh, shared libs) and
# `docker import` turns it into an image. Cached: skipped when an image with the same
# inputs (dals/ sources, these scripts, the Python version, the DAL) exists. --force rebuilds.
set -euo pipefail
cd "$(dirname "$0")/../.."

DAL=sample
IMAGE=
FORCE=0
while [ $# -gt 0 ]; do
  case "$1" in
    --force) FORCE=1 ;;
    --dal) shift; DAL=${1:-} ;;
    -*) echo "usage: $0 [--force] [--dal sample|kv] [IMAGE]" >&2; exit 2 ;;
    *) IMAGE=$1 ;;
  esac
  shift
done
case "$DAL" in
  sample) IMAGE=${IMAGE:-dgw-sample-dal:test}; CMD='["python3", "-m", "dals.sample"]'
          DISTS="aiohttp grpcio"
          CHECK='import aiohttp, grpc, dals.sample, dals.sample.probe' ;;
  kv) IMAGE=${IMAGE:-dgw-kv:test}; CMD='["python3", "-m", "dals.kv", "serve"]'
      DISTS="aiohttp grpcio protobuf asyncpg redis hiredis uvloop pydantic PyYAML"
      CHECK='import dals.kv.server, dals.kv.engines.sqlite, dals.kv.engines.postgres, dals.kv.cache, sqlite3, uvloop, hiredis' ;;
  *) echo "$0: --dal must be sample or kv, not '$DAL'" >&2; exit 2 ;;
esac
PY=${DGW_PYTHON:-.venv/bin/python}
log() { echo "build-dal-image: $*" >&2; }

if ! docker version --format '{{.Server.Version}}' >/dev/null 2>&1; then
  log "no Docker engine answers; run deploy/docker/start-engine.sh first"; exit 1
fi

HASH=$( { "$PY" -c 'import sys; print(sys.version)'; echo "$DAL";
          cat deploy/docker/build-dal-image.sh deploy/docker/rootfs.py;
          find dals -name '*.py' -print0 | sort -z | xargs -0 cat; } | sha256sum | cut -c1-16)
HAVE=$(docker image inspect -f '{{ index .Config.Labels "dgw.build-hash" }}' "$IMAGE" 2>/dev/null || true)
if [ "$FORCE" = 0 ] && [ "$HAVE" = "$HASH" ]; then
  log "$IMAGE is up to date (build $HASH)"; exit 0
fi

START=$SECONDS
OLD=$(docker image inspect -f '{{.Id}}' "$IMAGE" 2>/dev/null || true)
ROOT=$(mktemp -d /tmp/dgw-rootfs.XXXXXX)
trap 'rm -rf "$ROOT"' EXIT
# shellcheck disable=SC2086  # one word per distribution
"$PY" deploy/docker/rootfs.py "$ROOT" $DISTS
tar -C "$ROOT" --numeric-owner --owner=0 --group=0 -c . | docker import \
  --change 'ENV PATH=/usr/local/bin:/usr/bin:/bin' \
  --change 'ENV PYTHONPATH=/app' \
  --change 'ENV PYTHONDONTWRITEBYTECODE=1' \
  --change 'ENV LANG=C.UTF-8' \
  --change 'WORKDIR /app' \
  --change "CMD $CMD" \
  --change "LABEL dgw.build-hash=$HASH" \
  --message "dgw $DAL DAL, assembled from $(hostname) files" \
  - "$IMAGE" >/dev/null
# Prove the image runs what the DAL needs before anyone relies on it.
docker run --rm --network none "$IMAGE" python3 -c "$CHECK" >/dev/null
# The previous build is left dangling by the re-tag; drop it unless a container uses it.
if [ -n "$OLD" ] && [ "$OLD" != "$(docker image inspect -f '{{.Id}}' "$IMAGE")" ]; then
  docker rmi "$OLD" >/dev/null 2>&1 || true
fi
SIZE=$(docker image inspect -f '{{.Size}}' "$IMAGE")
log "built $IMAGE (build $HASH, $((SIZE / 1024 / 1024)) MiB) in $((SECONDS - START))s"
