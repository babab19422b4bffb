#!/usr/bin/env bash
# Prints the path of an nginx binary with the auth_request module (the policy enforcement point of
# tests/e2e_nginx.rs). Uses `nginx` on PATH or /usr/sbin/nginx; otherwise installs Debian's
# nginx-light (or nginx, where this Debian has no -light) with apt-get, non-interactively, without
# starting the distribution's nginx service. Fails loudly when nothing usable can be had: the test
# must not be skipped silently.
#
#   e2e/tools/nginx.sh            prints e.g. /usr/sbin/nginx
set -euo pipefail

log() { printf '[nginx] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

find_nginx() {
  local n
  n=$(command -v nginx 2>/dev/null || true)
  [ -n "$n" ] || { [ -x /usr/sbin/nginx ] && n=/usr/sbin/nginx; }
  [ -n "$n" ] && printf '%s\n' "$n"
}

check_modules() { # nginx: it must have auth_request and SSL (the decision point speaks only HTTPS)
  local v
  v=$("$1" -V 2>&1) || die "$1 -V failed: $v"
  [[ $v == *--with-http_auth_request_module* ]] || die "$1 lacks the auth_request module (nginx -V: $v)"
  [[ $v == *--with-http_ssl_module* ]] || die "$1 lacks the ssl module (nginx -V: $v)"
}

nginx=$(find_nginx || true)
if [ -z "$nginx" ]; then
  command -v apt-get >/dev/null || die "nginx is not installed and there is no apt-get to install it with"
  [ "$(id -u)" = 0 ] || die "nginx is not installed and installing it needs root (apt-get install nginx-light)"
  export DEBIAN_FRONTEND=noninteractive
  log "nginx not found; apt-get update"
  apt-get update -qq >&2 || die "apt-get update failed"
  pkg=nginx-light
  candidate=$(apt-cache policy nginx-light 2>/dev/null | sed -n 's/^ *Candidate: *//p')
  if [ -z "$candidate" ] || [ "$candidate" = "(none)" ]; then
    pkg=nginx
  fi
  log "installing $pkg"
  # Keep the package's maintainer scripts from starting the distribution's nginx (port 80): the tests
  # run their own. A policy-rc.d that is already there is left alone.
  policy=/usr/sbin/policy-rc.d own_policy=
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod +x "$policy" && own_policy=1
  fi
  rc=0
  apt-get install -y -qq --no-install-recommends -o Dpkg::Options::=--force-confdef \
    -o Dpkg::Options::=--force-confold "$pkg" >&2 || rc=$?
  [ -z "$own_policy" ] || rm -f "$policy"
  [ "$rc" = 0 ] || die "apt-get install $pkg failed (exit $rc)"
  nginx=$(find_nginx || true)
  [ -n "$nginx" ] || die "installed $pkg but found no nginx binary on PATH or at /usr/sbin/nginx"
fi
check_modules "$nginx"
printf '%s\n' "$nginx"
