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
  # nginx-light where this Debian has it, else nginx.
  pkg=nginx-light
  candidate=$(apt-cache policy nginx-light 2>/dev/null | sed -n 's/^ *Candidate: *//p')
  if [ -z "$candidate" ] || [ "$candidate" = "(none)" ]; then
    pkg=nginx
  fi
  "$(dirname "$0")/apt-install.sh" "$pkg"
  nginx=$(find_nginx || true)
  [ -n "$nginx" ] || die "installed $pkg but found no nginx binary on PATH or at /usr/sbin/nginx"
fi
check_modules "$nginx"
printf '%s\n' "$nginx"
