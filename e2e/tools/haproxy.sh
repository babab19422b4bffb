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
  command -v apt-get >/dev/null || die "haproxy is not installed and there is no apt-get to install it with"
  [ "$(id -u)" = 0 ] || die "haproxy is not installed and installing it needs root (apt-get install haproxy)"
  export DEBIAN_FRONTEND=noninteractive
  log "haproxy not found; apt-get update"
  apt-get update -qq >&2 || die "apt-get update failed"
  log "installing haproxy"
  # Keep the package's maintainer scripts from starting the distribution's haproxy: the tests run
  # their own. A policy-rc.d that is already there is left alone.
  policy=/usr/sbin/policy-rc.d own_policy=
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod +x "$policy" && own_policy=1
  fi
  rc=0
  apt-get install -y -qq --no-install-recommends -o Dpkg::Options::=--force-confdef \
    -o Dpkg::Options::=--force-confold haproxy >&2 || rc=$?
  [ -z "$own_policy" ] || rm -f "$policy"
  [ "$rc" = 0 ] || die "apt-get install haproxy failed (exit $rc)"
  haproxy=$(find_haproxy || true)
  [ -n "$haproxy" ] || die "installed haproxy but found no haproxy binary on PATH or at /usr/sbin/haproxy"
fi
check_version "$haproxy"
printf '%s\n' "$haproxy"
