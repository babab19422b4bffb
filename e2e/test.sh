#!/usr/bin/env bash
# Runs every test: unit tests (no cluster), then the integration tests against a
# real etcd + kube-apiserver that this script starts in a private directory and
# always stops again, also on failure or interrupt.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
export PATH="$root/.cache/bin:$PATH"

# Free space on the disk that target/, the control plane and the node's kubelet share, printed at each
# step: a CI log then says where it went when the disk runs short.
free_mib() { df -Pm "$root" | awk 'NR == 2 {print $4}'; }
disk() { echo "== free disk $*: $(free_mib) MiB"; }
disk "at the start"
# A clean checkout's builds take about 6 GiB (target/: tests, integration tests, the release binary) and the
# node asks 1.5 GiB more (e2e/node.sh). When less is free, Go's build cache goes first: it only made the
# control plane's binaries (`make tools`, already built) and is rebuilt on demand. Nothing of the project's
# is removed.
want_mib=${AGENTID_TEST_DISK_WANT_MIB:-8192}
if [ "$(free_mib)" -lt "$want_mib" ] && command -v go >/dev/null; then
  gocache=$(go env GOCACHE 2>/dev/null || true)
  if [ -d "$gocache" ]; then
    echo "== less than $want_mib MiB free: emptying Go's build cache ($gocache, $(du -sm "$gocache" | cut -f1) MiB)"
    go clean -cache
    disk "after emptying Go's build cache"
  fi
fi

echo "== unit tests and CRD drift (no cluster)"
cargo test --locked
disk "after the unit tests"

export AGENTID_CLUSTER_DIR="${AGENTID_TEST_CLUSTER_DIR:-$root/.cache/test-cluster}"
results="$root/.cache/e2e-results.log"
mkdir -p "$root/.cache"
: > "$results"
cleanup() {
  local rc=$?
  [ -z "${rotation_pid:-}" ] || kill "$rotation_pid" 2>/dev/null || true
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
# The real node (e2e/node.sh: containerd, kubelet, kube-proxy, controller manager, scheduler):
# AGENTID_NODE=1 requires it, AGENTID_NODE=0 leaves it out, unset runs it when this machine can.
# Without it the tests in tests/e2e_node*.rs are reported as ignored: not run, and said so at the end.
node_auto=0
if [ -z "${AGENTID_NODE:-}" ]; then
  node_auto=1
  if why=$(e2e/node.sh preflight); then AGENTID_NODE=1; else AGENTID_NODE=0; no_node_reason=$why; fi
fi
export AGENTID_NODE
no_node_reason=${no_node_reason:-AGENTID_NODE=$AGENTID_NODE}
# Everything is built before the control plane starts, so the node's own check of free disk (e2e/node.sh
# up) sees what the builds left, and no build eats into the kubelet's floor while pods should run.
echo "== building the integration tests$([ "$AGENTID_NODE" = 1 ] && echo ", and the release images for the node")"
cargo test --locked --features e2e --test 'e2e_*' --test threats --no-run
if [ "$AGENTID_NODE" = 1 ]; then
  e2e/tools/node-packages.sh
  cargo build --release --locked --bin agentid --example sample-agent
  e2e/tools/image.sh agentid
  e2e/tools/image.sh sample-agent
fi
disk "after the builds"
echo "== starting the local control plane$([ "$AGENTID_NODE" = 1 ] && echo " with a real node")"
if ! e2e/cluster.sh up; then
  # Asked for (AGENTID_NODE=1) or no node at all: a failure. Chosen by preflight: go on without it,
  # loudly, after `down` restored the host.
  [ "$AGENTID_NODE" = 1 ] && [ "$node_auto" = 1 ] || exit 1
  echo "== THE NODE DID NOT START (its log is above; e2e/node.sh); going on WITHOUT it" >&2
  e2e/cluster.sh down
  AGENTID_NODE=0 no_node_reason="the node did not start on this machine (see the log above)"
  e2e/cluster.sh up
fi
export KUBECONFIG="$AGENTID_CLUSTER_DIR/kubeconfig"
echo "== nginx for tests/e2e_nginx.rs: $(e2e/tools/nginx.sh)"
AGENTID_HAPROXY=$(e2e/tools/haproxy.sh); export AGENTID_HAPROXY; echo "== haproxy for tests/e2e_lb.rs: $AGENTID_HAPROXY"
AGENTID_CHROMIUM=$(e2e/tools/chromium.sh); export AGENTID_CHROMIUM
echo "== chromium for tests/e2e_report_html.rs: $AGENTID_CHROMIUM"
rotation_pid=
if [ "$AGENTID_NODE" = 1 ]; then
  echo "== the agentid and sample-agent images from the release build, loaded into the node (make image)"
  e2e/node.sh load agentid sample-agent
  # The kubelet rotates projected tokens only after 80 % of their lifetime (at least 600 s): this test
  # waits about 8 minutes, so it runs in the background, alongside the suites below.
  rotation_bin=$(cargo test --locked --features e2e --test e2e_token_rotation --no-run --message-format=json \
    | python3 -c 'import json, sys
print(next(m["executable"] for m in map(json.loads, sys.stdin)
           if m.get("executable") and m["target"]["name"] == "e2e_token_rotation"))')
  echo "== in the background: the kubelet's rotation of an agent's token (tests/e2e_token_rotation.rs, ~8 min)"
  "$rotation_bin" --ignored > "$root/.cache/e2e-rotation.log" 2>&1 &
  rotation_pid=$!
fi
echo "== integration tests against the real kube-apiserver"
set +e
cargo test --locked --no-fail-fast --features e2e --test 'e2e_*' --test threats -- --test-threads=4 2>&1 | tee "$results"
status=${PIPESTATUS[0]}
set -e
if [ "$AGENTID_NODE" = 1 ]; then
  # Also after failures above: what the node shows is worth knowing either way.
  echo "== tests that need the node (tests/e2e_node*.rs, run with --ignored)"
  set +e
  cargo test --locked --no-fail-fast --features e2e --test 'e2e_node*' -- --ignored 2>&1 | tee -a "$results"
  node_status=${PIPESTATUS[0]}
  set -e
  if [ "$node_status" != 0 ]; then
    status=$node_status
    echo "== the node after its tests failed (e2e/node.sh diagnose)"
    e2e/node.sh diagnose 2>&1 | tee -a "$results" || true
  fi
  # The suites of what users install (admission, grants, tasks, task tokens, decisions) once more, now
  # against agentid installed by its chart (2 replicas, webhook through the Service, the chart's RBAC)
  # instead of an in-process operator: tests/support/mod.rs (AGENTID_E2E_CHART). One test at a time, so
  # the metrics a test reads are the growth during that test.
  echo "== the admission, grant, task, token and decision suites against agentid installed by its chart"
  set +e
  e2e/chart-suites.sh 2>&1 | tee -a "$results"
  chart_status=${PIPESTATUS[0]}
  set -e
  [ "$chart_status" = 0 ] || status=$chart_status
  echo "== the kubelet's rotation of an agent's token (started in the background above)"
  set +e
  wait "$rotation_pid"
  rotation_status=$?
  set -e
  tee -a "$results" < "$root/.cache/e2e-rotation.log"
  [ "$rotation_status" = 0 ] || status=$rotation_status
else
  echo "== NOT RUN: the tests that need a real node (tests/e2e_node*.rs, listed as ignored above): $no_node_reason" >&2
fi
disk "at the end"
exit "$status"
