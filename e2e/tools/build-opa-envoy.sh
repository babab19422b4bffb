#!/usr/bin/env bash
# Builds Open Policy Agent with its Envoy ext_authz gRPC plugin (opa-envoy-plugin, OPA's "-envoy" images)
# from its Go module into the git-ignored tool cache, for the side-by-side gRPC decision-point benchmark
# (`make bench-pdp-grpc`, benches/pdp_grpc_load.rs, bench/opa/envoy.rego). Idempotent: skipped when the
# binary already reports the wanted version.
#
#   e2e/tools/build-opa-envoy.sh      OPA_ENVOY_VERSION=v1.14.1-envoy by default (OPA v1.14.1 inside;
#                                     needs Go >= 1.25)
#
# Output: $AGENTID_BIN_DIR/opa-envoy (default <repo>/.cache/bin/opa-envoy), an `opa` binary with the
# `envoy_ext_authz_grpc` plugin registered. Like e2e/tools/build-opa.sh: the local Go toolchain only
# (GOTOOLCHAIN=local), no cgo, its own module directory under .cache/build so its requirements are
# resolved for this toolchain and never mix with another tool's.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
OPA_ENVOY_VERSION=${OPA_ENVOY_VERSION:-v1.14.1-envoy}
bin=${AGENTID_BIN_DIR:-$root/.cache/bin}
work=${AGENTID_BUILD_DIR:-$root/.cache/build}
mkdir -p "$bin" "$work"
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-buildvcs=false

log() { printf '[build-opa-envoy] %s\n' "$*" >&2; }

if [ -x "$bin/opa-envoy" ]; then
  # Read the whole output first (see build.sh: `| grep -q` and pipefail make a false "absent").
  out=$("$bin/opa-envoy" version 2>/dev/null) || true
  if [[ $out == *"Version: ${OPA_ENVOY_VERSION#v}"* ]]; then
    log "opa-envoy $OPA_ENVOY_VERSION present"; exit 0
  fi
fi

mod="$work/opa-envoy-$OPA_ENVOY_VERSION"
mkdir -p "$mod"
cat > "$mod/go.mod" <<EOM
module agentid.dev/e2e/opa-envoy

go $(go env GOVERSION | sed 's/^go//')
EOM
log "building opa-envoy-plugin $OPA_ENVOY_VERSION (cold: a few minutes)"
# The main package is cmd/opa-envoy-plugin (OPA's root command plus the plugin). The version string is
# OPA's package variable (1.x: v1/version), set the way the plugin's release build names it.
pkg=github.com/open-policy-agent/opa-envoy-plugin
# `go get` names the main package, not the module: the module root is no package (only tools.go), so
# getting the module alone would leave the plugin's and OPA's packages without go.sum entries.
(cd "$mod" && go get "$pkg/cmd/opa-envoy-plugin@$OPA_ENVOY_VERSION" &&
  go build -trimpath -ldflags "-s -w -X github.com/open-policy-agent/opa/v1/version.Version=${OPA_ENVOY_VERSION#v}" \
    -o "$bin/opa-envoy" "$pkg/cmd/opa-envoy-plugin")
# Its first line, without `| head -1`: head closing the pipe early is SIGPIPE (141) under pipefail.
out=$("$bin/opa-envoy" version)
printf '%s\n' "${out%%$'\n'*}" >&2
