#!/usr/bin/env bash
# Set up everything lastbackend needs on a Debian machine, then run it.
#
#   scripts/bootstrap.sh daemon [flags]      start `lastbackend daemon` on its embedded defaults
#   scripts/bootstrap.sh test [pytest args]  run the whole test suite (real etcd, started by fixtures)
#   scripts/bootstrap.sh setup               only install
#
# Installs what is missing: Debian's etcd-server (the etcd binary the daemon and the tests start),
# etcd-client (etcdctl, for admins), git, python3-venv, docker.io (the engine the node agent drives),
# caddy (the router's proxy), mmdebstrap (builds the debian stack from this machine's apt sources),
# and for the e2e tests busybox-static (the offline base image), curl (a TLS client for the offline
# image that checks builds' CA bundle), docker-registry and apache2-utils (htpasswd), and for the
# dashboard's browser tests chromium (Playwright drives this one; it never downloads a browser of
# its own), and systemd for systemd-analyze (the cluster tests verify deploy/systemd/'s units; no
# systemd needs to run); then a virtualenv in .venv with the package. The e2e fixtures start dockerd when it is
# not running and they are root.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

missing=()
command -v etcd >/dev/null || missing+=(etcd-server)
command -v etcdctl >/dev/null || missing+=(etcd-client)
command -v git >/dev/null || missing+=(git)
command -v openssl >/dev/null || missing+=(openssl)
command -v dockerd >/dev/null || missing+=(docker.io)
dpkg-query -W -f '${Status}' busybox-static 2>/dev/null | grep -q 'ok installed' || missing+=(busybox-static)
command -v caddy >/dev/null || missing+=(caddy)
command -v curl >/dev/null || missing+=(curl)
command -v mmdebstrap >/dev/null || missing+=(mmdebstrap)
command -v docker-registry >/dev/null || missing+=(docker-registry)
command -v htpasswd >/dev/null || missing+=(apache2-utils)
command -v chromium >/dev/null || missing+=(chromium)
command -v systemd-analyze >/dev/null || missing+=(systemd)
python3 -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3-venv)
if [ ${#missing[@]} -gt 0 ]; then
  echo "bootstrap: installing ${missing[*]}" >&2
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# (Re)install the package when pyproject.toml changes.
stamp=".venv/.installed-$(sha1sum pyproject.toml | cut -c1-12)"
if [ ! -f "$stamp" ]; then
  echo "bootstrap: installing the package into .venv" >&2
  python3 -m venv .venv
  .venv/bin/pip install -q --disable-pip-version-check -e '.[test]'
  rm -f .venv/.installed-*
  touch "$stamp"
fi

# The node agent drives the local Docker engine: start it if it is not running (systemd where
# there is one, else dockerd in the background, as on a container or CI machine).
if ! docker info >/dev/null 2>&1; then
  if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
    as_root systemctl start docker || true
  else
    as_root sh -c 'nohup dockerd >/var/log/dockerd.log 2>&1 &'
  fi
  for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
  docker info >/dev/null 2>&1 || echo "bootstrap: warning: Docker is not running; services will not start" >&2
fi

cmd="${1:-daemon}"
shift || true
case "$cmd" in
  daemon) exec .venv/bin/lastbackend daemon "$@" ;;
  test) exec .venv/bin/pytest "$@" ;;
  setup) ;;
  *) echo "usage: $0 daemon|test|setup [args]" >&2; exit 2 ;;
esac
