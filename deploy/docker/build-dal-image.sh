#!/usr/bin/env bash
# Build the sample DAL image (default dgw-sample-dal:test) from files on this host:
# no registry, no pulls. deploy/docker/rootfs.py assembles a root filesystem (Python,
# its stdlib, aiohttp + grpcio, the project's dals/ package, /bin/sh, shared libs) and
# `docker import` turns it into an image. Cached: skipped when an image with the same
# inputs (dals/ sources, these scripts, the Python version) exists. --force rebuilds.
set -euo pipefail
cd "$(dirname "$0")/../.."

IMAGE=dgw-sample-dal:test
FORCE=0
for arg in "$@"; do
  case "$arg" in
    --force) FORCE=1 ;;
    -*) echo "usage: $0 [--force] [IMAGE]" >&2; exit 2 ;;
    *) IMAGE=$arg ;;
  esac
done
PY=${DGW_PYTHON:-.venv/bin/python}
log() { echo "build-dal-image: $*" >&2; }

if ! docker version --format '{{.Server.Version}}' >/dev/null 2>&1; then
  log "no Docker engine answers; run deploy/docker/start-engine.sh first"; exit 1
fi

HASH=$( { "$PY" -c 'import sys; print(sys.version)';
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
"$PY" deploy/docker/rootfs.py "$ROOT"
tar -C "$ROOT" --numeric-owner --owner=0 --group=0 -c . | docker import \
  --change 'ENV PATH=/usr/local/bin:/usr/bin:/bin' \
  --change 'ENV PYTHONPATH=/app' \
  --change 'ENV PYTHONDONTWRITEBYTECODE=1' \
  --change 'ENV LANG=C.UTF-8' \
  --change 'WORKDIR /app' \
  --change 'CMD ["python3", "-m", "dals.sample"]' \
  --change "LABEL dgw.build-hash=$HASH" \
  --message "dgw sample DAL, assembled from $(hostname) files" \
  - "$IMAGE" >/dev/null
# Prove the image runs what the DAL needs before anyone relies on it.
docker run --rm --network none "$IMAGE" \
  python3 -c 'import aiohttp, grpc, dals.sample, dals.sample.probe' >/dev/null
# The previous build is left dangling by the re-tag; drop it unless a container uses it.
if [ -n "$OLD" ] && [ "$OLD" != "$(docker image inspect -f '{{.Id}}' "$IMAGE")" ]; then
  docker rmi "$OLD" >/dev/null 2>&1 || true
fi
SIZE=$(docker image inspect -f '{{.Size}}' "$IMAGE")
log "built $IMAGE (build $HASH, $((SIZE / 1024 / 1024)) MiB) in $((SECONDS - START))s"
