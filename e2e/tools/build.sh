#!/usr/bin/env bash
# Builds the local test control plane (kube-apiserver, kubectl, etcd, helm), the node
# (kubelet, kube-controller-manager, kube-scheduler, kube-proxy) and
# the gRPC test clients (grpcurl, ghz) from Go modules, and h1client (e2e/tools/h1client: Go's HTTP/1.1
# client, as the apiserver calls a webhook) from this repository, into a git-ignored cache.
# Idempotent: a binary that already reports the wanted version is not rebuilt.
# `kube` builds all six Kubernetes binaries from one Go module (cold ~10 min for the node's four on
# 2 busy cores, ~1.5 min with a warm Go cache); the node's are used only by e2e/node.sh.
#
#   e2e/tools/build.sh [kube|etcd|helm|grpcurl|ghz|h1client|all]    (default: all)
#
# Output: $AGENTID_BIN_DIR (default <repo>/.cache/bin)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
# shellcheck source=versions.env
source "$here/versions.env"
# gRPC clients for the decision point's ext_authz interface (e2e, load); override like versions.env.
GRPCURL_VERSION=${GRPCURL_VERSION:-v1.9.4}
GHZ_VERSION=${GHZ_VERSION:-v0.121.0}
bin=${AGENTID_BIN_DIR:-$root/.cache/bin}
work=${AGENTID_BUILD_DIR:-$root/.cache/build}
mkdir -p "$bin" "$work"
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-buildvcs=false

log() { printf '[build] %s\n' "$*" >&2; }

have_version() { # binary expected-substring args...
  # Read the whole output first: `| grep -q` may close the pipe early, and with pipefail the
  # writer's SIGPIPE would count as "not present" and trigger a needless rebuild.
  [ -x "$bin/$1" ] || return 1
  local out
  out=$("$bin/$1" "${@:3}" 2>/dev/null) || true
  [[ $out == *"$2"* ]]
}

# The control plane (kube-apiserver, kubectl) and the node (kubelet, kube-controller-manager,
# kube-scheduler, kube-proxy, used by e2e/node.sh) all come from one Go module, so they share
# one dependency graph. A binary that already reports $KUBE_VERSION is not rebuilt.
KUBE_TOOLS="kube-apiserver kubectl kubelet kube-controller-manager kube-scheduler kube-proxy"

kube_present() { # name
  case $1 in
    kubectl) have_version kubectl "$KUBE_VERSION" version --client ;;
    *) have_version "$1" "Kubernetes $KUBE_VERSION" --version ;;
  esac
}

build_kube() {
  local missing="" t
  for t in $KUBE_TOOLS; do kube_present "$t" || missing="$missing $t"; done
  if [ -z "$missing" ]; then log "$KUBE_TOOLS $KUBE_VERSION present"; return; fi
  local mod="$work/kube-$KUBE_VERSION"
  mkdir -p "$mod"
  # Two runs at once (e.g. two engineers' `make test`) would rewrite go.mod under each other.
  exec 9>"$mod.lock"
  flock 9
  missing=""
  for t in $KUBE_TOOLS; do kube_present "$t" || missing="$missing $t"; done
  if [ -z "$missing" ]; then log "$KUBE_TOOLS $KUBE_VERSION present"; exec 9>&-; return; fi
  log "resolving k8s.io/kubernetes@$KUBE_VERSION"
  local gomod
  gomod=$(cd "$mod" && go mod download -json "k8s.io/kubernetes@$KUBE_VERSION" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",$/\1/p')
  [ -f "$gomod" ] || { log "cannot find go.mod of k8s.io/kubernetes@$KUBE_VERSION"; exit 1; }
  local staging_ver="v0.${KUBE_VERSION#v1.}"
  {
    echo "module agentid.dev/e2e/kube"
    echo
    echo "go $(go env GOVERSION | sed 's/^go//')"
    echo
    echo "require k8s.io/kubernetes $KUBE_VERSION"
    echo
    echo "replace ("
    # Every staging module that k8s.io/kubernetes replaces with a local path
    # becomes the published module of the matching v0.X.Y version.
    sed -n 's#^[[:space:]]*\(k8s.io/[a-z0-9-]*\) => ./staging/src/.*#\1#p' "$gomod" |
      while read -r m; do echo "	$m => $m $staging_ver"; done
    echo ")"
  } > "$mod/go.mod"
  log "$(grep -c ' => ' "$mod/go.mod") staging modules replaced with $staging_ver"
  local pkgs=""
  for t in $KUBE_TOOLS; do pkgs="$pkgs k8s.io/kubernetes/cmd/$t@$KUBE_VERSION"; done
  # shellcheck disable=SC2086
  (cd "$mod" && go get -tool $pkgs && go list -m k8s.io/kubernetes | grep -q " $KUBE_VERSION$")
  local major=${KUBE_VERSION#v}; major=${major%%.*}
  local minor=${KUBE_VERSION#v*.}; minor=${minor%%.*}
  local ld="-s -w"
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld="$ld -X $p.gitVersion=$KUBE_VERSION -X $p.gitMajor=$major -X $p.gitMinor=$minor -X $p.gitTreeState=clean -X $p.buildDate=1970-01-01T00:00:00Z"
  done
  for t in $missing; do
    log "building $t $KUBE_VERSION (cold: kube-apiserver 10-20 min, the four node binaries ~10 min)"
    (cd "$mod" && go build -trimpath -ldflags "$ld" -o "$bin/$t.tmp" "k8s.io/kubernetes/cmd/$t")
    mv "$bin/$t.tmp" "$bin/$t"
  done
  exec 9>&-
}

build_etcd() {
  if have_version etcd "etcd Version: ${ETCD_VERSION#v}" --version; then
    log "etcd $ETCD_VERSION present"; return
  fi
  local mod="$work/etcd-$ETCD_VERSION"
  mkdir -p "$mod"
  cp "$here/etcd/main.go" "$mod/main.go"
  cat > "$mod/go.mod" <<EOM
module agentid.dev/e2e/etcd

go $(go env GOVERSION | sed 's/^go//')
EOM
  log "building etcd $ETCD_VERSION"
  (cd "$mod" && go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION" && go mod tidy &&
    go build -trimpath -ldflags "-s -w" -o "$bin/etcd" .)
}

build_helm() {
  if have_version helm "$HELM_VERSION" version --short; then
    log "helm $HELM_VERSION present"; return
  fi
  log "building helm $HELM_VERSION"
  GOBIN="$bin" go install -trimpath -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
}

# A command from a Go module, built in its own module directory (so its go.mod requirements are
# resolved for this Go toolchain and never mix with another tool's) with the version stamped in.
build_go_tool() { # name package version version-variable
  local name=$1 pkg=$2 version=$3 var=$4
  # grpcurl and ghz print their version on stderr.
  if [ -x "$bin/$name" ] && [[ $("$bin/$name" --version 2>&1 || true) == *"${version#v}"* ]]; then
    log "$name $version present"; return
  fi
  local mod="$work/$name-$version"
  mkdir -p "$mod"
  cat > "$mod/go.mod" <<EOM
module agentid.dev/e2e/$name

go $(go env GOVERSION | sed 's/^go//')
EOM
  log "building $name $version"
  (cd "$mod" && go get "$pkg@$version" &&
    go build -trimpath -ldflags "-s -w -X $var=$version" -o "$bin/$name" "$pkg")
}

build_grpcurl() {
  build_go_tool grpcurl github.com/fullstorydev/grpcurl/cmd/grpcurl "$GRPCURL_VERSION" main.version
}

build_ghz() {
  build_go_tool ghz github.com/bojand/ghz/cmd/ghz "$GHZ_VERSION" main.version
}

# Standard library only: no module to download. Rebuilt when its source changes (the hash is stamped in).
build_h1client() {
  local src="$here/h1client" sum
  sum=$(sha256sum "$src/main.go" | cut -d' ' -f1)
  if have_version h1client "$sum" --version; then log "h1client present"; return; fi
  log "building h1client"
  (cd "$src" && go build -trimpath -ldflags "-s -w -X main.source=$sum" -o "$bin/h1client" .)
}

case "${1:-all}" in
  kube) build_kube ;;
  etcd) build_etcd ;;
  helm) build_helm ;;
  grpcurl) build_grpcurl ;;
  ghz) build_ghz ;;
  h1client) build_h1client ;;
  all) build_etcd; build_kube; build_helm; build_grpcurl; build_ghz; build_h1client ;;
  *) echo "usage: $0 [kube|etcd|helm|grpcurl|ghz|h1client|all]" >&2; exit 2 ;;
esac
