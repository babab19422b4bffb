#!/usr/bin/env bash
# Builds conftest (Open Policy Agent's policy tester for configuration files) from its Go module into the
# git-ignored tool cache, for the offline side-by-side benchmark of `agentid check` (`make bench-peers`,
# bench/peers/). Idempotent: skipped when the binary already reports the wanted version.
#
#   e2e/tools/build-conftest.sh            CONFTEST_VERSION=v0.71.1 by default
#
# Output: $AGENTID_BIN_DIR/conftest (default <repo>/.cache/bin/conftest). Like e2e/tools/build-opa.sh: the
# local Go toolchain only (GOTOOLCHAIN=local), no cgo, its own module directory under .cache/build so its
# requirements are resolved for this toolchain and never mix with another tool's. If the Go module proxy
# does not serve the default version, name another one: CONFTEST_VERSION=v0.70.1 e2e/tools/build-conftest.sh
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
CONFTEST_VERSION=${CONFTEST_VERSION:-v0.71.1}
bin=${AGENTID_BIN_DIR:-$root/.cache/bin}
work=${AGENTID_BUILD_DIR:-$root/.cache/build}
mkdir -p "$bin" "$work"
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-buildvcs=false

log() { printf '[build-conftest] %s\n' "$*" >&2; }

if [ -x "$bin/conftest" ]; then
  # Read the whole output first (see build.sh: `| grep -q` and pipefail make a false "absent").
  out=$("$bin/conftest" --version 2>/dev/null) || true
  if [[ $out == *"Conftest: ${CONFTEST_VERSION#v}"* ]]; then
    log "conftest $CONFTEST_VERSION present"; exit 0
  fi
fi

mod="$work/conftest-$CONFTEST_VERSION"
mkdir -p "$mod"
cat > "$mod/go.mod" <<EOM
module agentid.dev/e2e/conftest

go $(go env GOVERSION | sed 's/^go//')
EOM
log "building conftest $CONFTEST_VERSION (cold: a few minutes)"
# conftest's main package is the module root; its version is a package variable in internal/version.
(cd "$mod" && go get "github.com/open-policy-agent/conftest@$CONFTEST_VERSION" &&
  go build -trimpath \
    -ldflags "-s -w -X github.com/open-policy-agent/conftest/internal/version.Version=${CONFTEST_VERSION#v}" \
    -o "$bin/conftest" github.com/open-policy-agent/conftest)
"$bin/conftest" --version >&2
