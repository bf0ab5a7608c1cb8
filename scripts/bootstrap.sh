#!/usr/bin/env bash
# Installs what the project needs on a fresh Debian/Ubuntu machine, idempotently:
#   - system packages openssh-server, prometheus, zstd, util-linux and nftables (the netns lab)
#     (apt, with sudo when not root), and for the real-server tests postgresql (server binaries
#     only; it is never started as a service), chromium and npm (when node/npm are missing);
#   - a venv in .venv with the locked Python dependencies (uv when available, else pip);
#   - the browser test's Node packages (playwright-core) in tests/e2e/browser/node_modules,
#     from its package-lock.json (`npm ci`; no browser download: the test uses /usr/bin/chromium).
# Called by `make demo` and `make test`; safe to run again (it skips what is present).
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
[ -x /usr/sbin/sshd ] || need_apt+=(openssh-server)
command -v prometheus >/dev/null 2>&1 || need_apt+=(prometheus)
# on-node backups and restores run `tar --zstd` on the node, which in the lab is this machine
command -v zstd >/dev/null 2>&1 || need_apt+=(zstd)
command -v flock >/dev/null 2>&1 || need_apt+=(util-linux)
# the e2e tests on PostgreSQL (tests/e2e/postgres.py starts its own server from these binaries)
compgen -G "/usr/lib/postgresql/*/bin/postgres" >/dev/null || need_apt+=(postgresql)
# the browser test: Debian's Chromium, driven by Node's playwright-core (Node >= 20 for it)
[ -x /usr/bin/chromium ] || need_apt+=(chromium)
command -v npm >/dev/null 2>&1 || need_apt+=(npm)
# the netns lab (`garage-lab up --netns`, the network fault tests) cuts and drops with nftables
[ -x /usr/sbin/nft ] || command -v nft >/dev/null 2>&1 || need_apt+=(nftables)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ]; then SUDO=""; elif command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    echo "bootstrap: need ${need_apt[*]} but I am not root and sudo is missing." >&2
    echo "bootstrap: install them yourself: apt-get install -y --no-install-recommends ${need_apt[*]}" >&2
    exit 1
  fi
  # Services must not auto-start on install (lab-environment trap 6): a machine without
  # policy-rc.d would start a system Prometheus on :9090 and sshd on :22.
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
    $SUDO chmod 755 /usr/sbin/policy-rc.d
  fi
  echo "bootstrap: apt-get install ${need_apt[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi
# sshd needs its privilege-separation directory; without systemd nobody creates it.
if [ ! -d /run/sshd ]; then
  if [ "$(id -u)" -eq 0 ]; then mkdir -p /run/sshd && chmod 755 /run/sshd; else sudo mkdir -p /run/sshd && sudo chmod 755 /run/sshd; fi
fi

PY=${PYTHON:-python3}
if ! "$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)'; then
  echo "bootstrap: Python >= 3.11 is required ($PY is $("$PY" --version 2>&1))" >&2
  exit 1
fi
stamp=.venv/.deps-$(sha256sum requirements.lock pyproject.toml | sha256sum | cut -c1-16)
if [ ! -e "$stamp" ]; then
  if ! "$PY" -m venv --help >/dev/null 2>&1; then
    echo "bootstrap: python3-venv is missing (apt-get install python3-venv)" >&2; exit 1
  fi
  [ -x .venv/bin/python ] || "$PY" -m venv .venv
  if command -v uv >/dev/null 2>&1 || .venv/bin/pip install -q uv; then
    UV=$(command -v uv || echo .venv/bin/uv)
    "$UV" pip install -q -p .venv/bin/python -r requirements.lock
    "$UV" pip install -q -p .venv/bin/python --no-deps -e .
  else
    .venv/bin/pip install -q -r requirements.lock
    .venv/bin/pip install -q --no-deps -e .
  fi
  rm -f .venv/.deps-*
  touch "$stamp"
fi

# the browser test's Node packages, reinstalled only when the lock file changed
BROWSER=tests/e2e/browser
bstamp=$BROWSER/node_modules/.deps-$(sha256sum $BROWSER/package-lock.json | cut -c1-16)
if [ ! -e "$bstamp" ]; then
  echo "bootstrap: npm ci in $BROWSER"
  (cd "$BROWSER" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
  touch "$bstamp"
fi
