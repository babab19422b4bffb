#!/usr/bin/env bash
# Installs Debian packages for the tests' real clients (e2e/tools/nginx.sh, haproxy.sh, chromium.sh):
# non-interactively, without recommends, and without letting the packages' maintainer scripts start
# the distribution's services (the tests run their own instances). Fails loudly: a test must not be
# skipped silently because its client could not be had.
#
#   e2e/tools/apt-install.sh PKG...
set -euo pipefail

log() { printf '[apt-install] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

[ $# -gt 0 ] || die "usage: $0 PKG..."
command -v apt-get >/dev/null || die "$* not installed and there is no apt-get to install it with"
[ "$(id -u)" = 0 ] || die "installing $* needs root (apt-get install $*)"
export DEBIAN_FRONTEND=noninteractive
log "apt-get update"
apt-get update -qq >&2 || die "apt-get update failed"
log "installing $*"
# A policy-rc.d that refuses every service start, unless one is already there (then it is left alone).
policy=/usr/sbin/policy-rc.d own_policy=
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod +x "$policy" && own_policy=1
fi
rc=0
apt-get install -y -qq --no-install-recommends -o Dpkg::Options::=--force-confdef \
  -o Dpkg::Options::=--force-confold "$@" >&2 || rc=$?
[ -z "$own_policy" ] || rm -f "$policy"
[ "$rc" = 0 ] || die "apt-get install $* failed (exit $rc)"
