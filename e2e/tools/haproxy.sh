#!/usr/bin/env bash
# Prints the path of an HAProxy binary (the load balancer in front of two agentid replicas in
# tests/e2e_lb.rs; its configuration is e2e/haproxy/agentid-webhook.cfg.example). Uses `haproxy` on
# PATH or /usr/sbin/haproxy; otherwise installs Debian's haproxy with apt-get, non-interactively,
# without starting the distribution's haproxy service. Fails loudly when nothing usable can be had:
# the test must not be skipped silently.
#
#   e2e/tools/haproxy.sh          prints e.g. /usr/sbin/haproxy
set -euo pipefail

log() { printf '[haproxy] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

find_haproxy() {
  local h
  h=$(command -v haproxy 2>/dev/null || true)
  [ -n "$h" ] || { [ -x /usr/sbin/haproxy ] && h=/usr/sbin/haproxy; }
  [ -n "$h" ] && printf '%s\n' "$h"
}

check_version() { # haproxy: the configuration needs 2.0 or later (`retry-on`, `option httpchk` with
  # `http-check send`, `check port` in a TCP backend)
  local v major minor
  v=$("$1" -v 2>&1) || die "$1 -v failed: $v"
  v=${v%%$'\n'*}
  [[ $v =~ version\ ([0-9]+)\.([0-9]+) ]] || die "cannot read the version of $1: $v"
  major=${BASH_REMATCH[1]} minor=${BASH_REMATCH[2]}
  [ "$major" -ge 2 ] || die "$1 is $major.$minor; 2.0 or later is needed ($v)"
}

haproxy=$(find_haproxy || true)
if [ -z "$haproxy" ]; then
  "$(dirname "$0")/apt-install.sh" haproxy
  haproxy=$(find_haproxy || true)
  [ -n "$haproxy" ] || die "installed haproxy but found no haproxy binary on PATH or at /usr/sbin/haproxy"
fi
check_version "$haproxy"
printf '%s\n' "$haproxy"
