#!/usr/bin/env bash
# Benchmarks agentid against a real local control plane (benches/cluster.rs):
# builds the control-plane tools if missing and the release binary, starts etcd +
# kube-apiserver in a private directory (never the dev cluster in .cluster) and
# always stops it again, also on failure or interrupt, installs the CRDs, then
# runs the bench, which spawns the operator as its own process and prints one
# markdown table per section.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
export PATH="$root/.cache/bin:$PATH"
started=$SECONDS

for b in etcd kube-apiserver kubectl; do
  if [ ! -x "$root/.cache/bin/$b" ]; then
    echo "== building the local control plane tools (missing $b)"
    e2e/tools/build.sh all
    break
  fi
done

echo "== source: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD 2>/dev/null || echo ' + uncommitted changes')"
echo "== building the release binary"
# With the bench's own features, so that `cargo bench` below reuses this build instead of making another.
# AGENTID_BENCH_FEATURES adds cargo features to both (jemalloc, the allocator, is a default feature).
features="e2e${AGENTID_BENCH_FEATURES:+,$AGENTID_BENCH_FEATURES}"
cargo build --release --locked --features "$features"

export AGENTID_CLUSTER_DIR="${AGENTID_BENCH_CLUSTER_DIR:-$root/.cache/bench-cluster}"
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  e2e/cluster.sh down || true
  if [ $rc -ne 0 ]; then
    echo "== bench failed (exit $rc); logs kept in $AGENTID_CLUSTER_DIR/logs" >&2
    tail -n 20 "$AGENTID_CLUSTER_DIR/logs/kube-apiserver.log" >&2 2>/dev/null || true
  fi
  echo "== total runtime $((SECONDS - started)) s"
  exit $rc
}
trap cleanup EXIT INT TERM
echo "== starting a private control plane in $AGENTID_CLUSTER_DIR"
e2e/cluster.sh up
export KUBECONFIG="$AGENTID_CLUSTER_DIR/kubeconfig"

echo "== installing the CRDs"
target/release/agentid crdgen | kubectl apply --server-side -f -
kubectl wait --for condition=Established --timeout=60s \
  crd/agentidentities.agentid.dev crd/toolgrants.agentid.dev crd/agenttasks.agentid.dev >/dev/null

echo "== cargo bench --features $features --bench cluster"
cargo bench --locked --features "$features" --bench cluster
