#!/usr/bin/env bash
# Install (from Debian's docker.io) and start a Docker engine for the test setup.
# Idempotent: an engine that already answers is left alone. No registry is used.
set -euo pipefail

LOG=${DGW_DOCKERD_LOG:-/var/log/dgw-dockerd.log}
SOCK=/var/run/docker.sock
WAIT_S=${DGW_DOCKERD_WAIT_S:-60}

log() { echo "start-engine: $*" >&2; }

engine_up() { docker version --format '{{.Server.Version}}' >/dev/null 2>&1; }

if engine_up; then
  log "engine already running ($(docker version --format '{{.Server.Version}}'))"
  exit 0
fi

if [ "$(id -u)" != 0 ]; then
  log "needs root to install and start dockerd"; exit 1
fi

if ! command -v dockerd >/dev/null 2>&1; then
  log "installing docker.io from Debian (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends docker.io >/dev/null
fi

# A stale pid file from a previous run makes dockerd refuse to start.
if [ -f /var/run/docker.pid ] && ! kill -0 "$(cat /var/run/docker.pid)" 2>/dev/null; then
  rm -f /var/run/docker.pid
fi

if ! pgrep -x dockerd >/dev/null 2>&1; then
  log "starting dockerd --storage-driver=vfs (log: $LOG)"
  nohup dockerd --storage-driver=vfs >>"$LOG" 2>&1 </dev/null &
fi

deadline=$((SECONDS + WAIT_S))
until engine_up; do
  if [ $SECONDS -ge $deadline ]; then
    log "engine did not answer on $SOCK within ${WAIT_S}s; last log lines:"
    tail -n 20 "$LOG" >&2 || true
    exit 1
  fi
  sleep 0.5
done
log "engine up ($(docker version --format '{{.Server.Version}}'))"
