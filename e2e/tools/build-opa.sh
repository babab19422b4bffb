#!/usr/bin/env bash
# Builds Open Policy Agent from its Go module into the git-ignored tool cache, for the side-by-side
# decision-point benchmark (`make bench-pdp`, bench/opa/). Idempotent: skipped when the binary already
# reports the wanted version.
#
#   e2e/tools/build-opa.sh            OPA_VERSION=v1.22.4 by default
#
# Output: $AGENTID_BIN_DIR/opa (default <repo>/.cache/bin/opa). Like e2e/tools/build.sh: the local Go
# toolchain only (GOTOOLCHAIN=local), no cgo, its own module directory under .cache/build so its
# requirements are resolved for this toolchain and never mix with another tool's.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
OPA_VERSION=${OPA_VERSION:-v1.22.4}
bin=${AGENTID_BIN_DIR:-$root/.cache/bin}
work=${AGENTID_BUILD_DIR:-$root/.cache/build}
mkdir -p "$bin" "$work"
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-buildvcs=false

log() { printf '[build-opa] %s\n' "$*" >&2; }

if [ -x "$bin/opa" ]; then
  # Read the whole output first (see build.sh: `| grep -q` and pipefail make a false "absent").
  out=$("$bin/opa" version 2>/dev/null) || true
  if [[ $out == *"Version: ${OPA_VERSION#v}"* ]]; then
    log "opa $OPA_VERSION present"; exit 0
  fi
fi

mod="$work/opa-$OPA_VERSION"
mkdir -p "$mod"
cat > "$mod/go.mod" <<EOM
module agentid.dev/e2e/opa

go $(go env GOVERSION | sed 's/^go//')
EOM
log "building opa $OPA_VERSION (cold: a few minutes)"
# OPA's main package is the module root; its version is a package variable (1.x: v1/version).
(cd "$mod" && go get "github.com/open-policy-agent/opa@$OPA_VERSION" &&
  go build -trimpath -ldflags "-s -w -X github.com/open-policy-agent/opa/v1/version.Version=${OPA_VERSION#v}" \
    -o "$bin/opa" github.com/open-policy-agent/opa)
# Its first line, without `| head -1`: head closing the pipe early is SIGPIPE (141) under pipefail.
out=$("$bin/opa" version)
printf '%s\n' "${out%%$'\n'*}" >&2
