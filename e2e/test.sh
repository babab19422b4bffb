#!/usr/bin/env bash
# Runs every test: unit tests (no cluster), then the integration tests against a
# real etcd + kube-apiserver that this script starts in a private directory and
# always stops again, also on failure or interrupt.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
export PATH="$root/.cache/bin:$PATH"

echo "== unit tests and CRD drift (no cluster)"
cargo test --locked

export AGENTID_CLUSTER_DIR="${AGENTID_TEST_CLUSTER_DIR:-$root/.cache/test-cluster}"
results="$root/.cache/e2e-results.log"
mkdir -p "$root/.cache"
: > "$results"
cleanup() {
  local rc=$?
  e2e/cluster.sh down || true
  if [ $rc -ne 0 ]; then
    echo "== tests failed; control-plane logs kept in $AGENTID_CLUSTER_DIR/logs" >&2
    tail -n 20 "$AGENTID_CLUSTER_DIR/logs/kube-apiserver.log" >&2 2>/dev/null || true
    # Last, so a CI log that keeps only its tail still names what failed and why.
    if [ -s "$results" ]; then
      echo "== failed tests (full output in $results)" >&2
      grep -E "^test .* FAILED$|^---- |panicked at|^thread '.*' panicked|^error(\[|:)" "$results" | tail -n 40 >&2 || true
      grep -A12 "panicked at" "$results" | tail -n 60 >&2 || true
    fi
  fi
  exit $rc
}
trap cleanup EXIT INT TERM
echo "== starting the local control plane"
if [ "${AGENTID_NODE:-}" = 1 ]; then
  # A real node too (e2e/node.sh); its tests (tests/e2e_node*.rs) are #[ignore]d without one.
  e2e/tools/node-packages.sh
fi
e2e/cluster.sh up
export KUBECONFIG="$AGENTID_CLUSTER_DIR/kubeconfig"
echo "== nginx for tests/e2e_nginx.rs: $(e2e/tools/nginx.sh)"
AGENTID_CHROMIUM=$(e2e/tools/chromium.sh); export AGENTID_CHROMIUM
echo "== chromium for tests/e2e_report_html.rs: $AGENTID_CHROMIUM"
echo "== integration tests against the real kube-apiserver"
cargo test --locked --no-fail-fast --features e2e --test 'e2e_*' --test threats -- --test-threads=4 2>&1 | tee "$results"
if [ "${AGENTID_NODE:-}" = 1 ]; then
  echo "== the agentid image from the release binary, loaded into the node (make image)"
  cargo build --release --locked
  e2e/tools/image.sh agentid
  e2e/node.sh load agentid
  echo "== tests that need the node (tests/e2e_node*.rs, run with --ignored)"
  cargo test --locked --no-fail-fast --features e2e --test 'e2e_node*' -- --ignored 2>&1 | tee -a "$results"
fi
