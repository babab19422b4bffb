#!/usr/bin/env bash
# Prints the path of a headless-capable Chromium (for tests/e2e_report_html.rs, which checks what the
# report's HTML page renders in a real browser). Uses `chromium` on PATH; otherwise installs Debian's
# `chromium` package with apt-get, non-interactively. Fails loudly when none can be had: the test must
# not be skipped silently.
#
#   e2e/tools/chromium.sh        prints e.g. /usr/bin/chromium
set -euo pipefail

log() { printf '[chromium] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

find_chromium() { command -v chromium 2>/dev/null || command -v chromium-browser 2>/dev/null || true; }

c=$(find_chromium)
if [ -z "$c" ]; then
  "$(dirname "$0")/apt-install.sh" chromium
  c=$(find_chromium)
  [ -n "$c" ] || die "installed chromium but found no chromium binary on PATH"
fi
"$c" --version >&2 || die "$c --version failed"
printf '%s\n' "$c"
