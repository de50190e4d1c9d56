#!/usr/bin/env bash
# Install Debian's etcd (etcd-server + etcdctl) if it is not there; `./dev test` runs
# this, like deploy/docker/start-engine.sh for Docker. Starts nothing: tests and
# deploy/ha/ start their own members.
set -euo pipefail
if command -v etcd >/dev/null && command -v etcdctl >/dev/null; then
  exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  echo "etcd is not installed and this is not a root Debian shell: install etcd-server and etcd-client" >&2
  exit 1
fi
echo "dev: installing etcd (Debian etcd-server, etcd-client)" >&2
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server etcd-client >/dev/null
# The package enables a system service on hosts with systemd; ours start their own members.
if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
  systemctl disable --now etcd >/dev/null 2>&1 || true
fi
