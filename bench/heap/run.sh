#!/usr/bin/env bash
# Where the operator's memory goes: runs the release binary under heaptrack against its own apiserver-only
# control plane (.cache/heap-cluster), creates N AgentIdentities, N ToolGrants and N AgentTasks (default
# 3,000 each), waits until every one is Ready, stops the operator with SIGKILL (so what was allocated then
# shows as "leaked", i.e. live) and prints the live heap grouped by where it was allocated
# (bench/heap/aggregate.py), next to VmRSS. Installs heaptrack (Debian package) when missing.
#
#   bench/heap/run.sh               N=3000
#   N=10000 bench/heap/run.sh       (heaptrack slows the operator down about twice)
#   WRAP=env bench/heap/run.sh      no heaptrack: VmRSS only
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
N=${N:-3000}
out="$root/.cache/heap"
mkdir -p "$out"
if [ -z "${WRAP:-}" ]; then
  if ! command -v heaptrack >/dev/null; then
    echo "== installing heaptrack (apt-get)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q heaptrack >/dev/null
  fi
  rm -f "$out"/heap.*
  WRAP="heaptrack -o $out/heap"
fi
# heaptrack sees only glibc's malloc: the build without the default jemalloc allocator, in a target
# directory of its own (target/heap/release/agentid) so the default build stays as it is. VmRSS alone
# (WRAP=env) measures the default build.
if [ "${WRAP%% *}" = heaptrack ]; then
  build=(--no-default-features) bin=target/heap/release/agentid
  export CARGO_TARGET_DIR="$root/target/heap"
else
  build=() bin=target/release/agentid
fi
[ -n "${NO_BUILD:-}" ] || cargo build --release --locked --bin agentid "${build[@]}"
unset CARGO_TARGET_DIR
export AGENTID_CLUSTER_DIR="$root/.cache/heap-cluster" PATH="$root/.cache/bin:$PATH"
export KUBECONFIG="$AGENTID_CLUSTER_DIR/kubeconfig"
e2e/cluster.sh up
pid=""
cleanup() { [ -n "$pid" ] && kill -9 "$pid" 2>/dev/null; e2e/cluster.sh down || true; }
trap cleanup EXIT
"$bin" crdgen | kubectl apply --server-side -f - >/dev/null
kubectl wait --for condition=Established --timeout=60s \
  crd/agentidentities.agentid.dev crd/toolgrants.agentid.dev crd/agenttasks.agentid.dev >/dev/null
kubectl create ns heap >/dev/null
kubectl create ns agentid-system >/dev/null
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
webhook=$(port)
# shellcheck disable=SC2086 # WRAP is a command with its arguments
$WRAP "$bin" run --operator-namespace agentid-system --watch-namespace heap \
  --probe-addr "127.0.0.1:$(port)" --webhook-addr "127.0.0.1:$webhook" --webhook-url "https://127.0.0.1:$webhook" \
  --broker-addr "127.0.0.1:$(port)" --pdp-addr "127.0.0.1:$(port)" \
  --webhook-client-ca-file "$AGENTID_CLUSTER_DIR/pki/webhook-client-ca.crt" \
  --webhook-configuration agentid-heap --webhook-scope agentid.dev/bench=heap >"$out/operator.log" 2>&1 &
# The operator itself (its command line starts with the binary; heaptrack's wrapper and the subshells it forks
# on the way do not), still there a second later.
for _ in $(seq 1 50); do
  pid=$(pgrep -f "^$bin run --operator-namespace agentid-system --watch-namespace heap" | tail -1 || true)
  [ -n "$pid" ] && sleep 1 && [ -e "/proc/$pid" ] && break
  pid=
  sleep 0.2
done
[ -n "$pid" ] || { echo "the operator did not start; $out/operator.log" >&2; exit 1; }
rss() { awk '/VmRSS/ {printf "%.1f MiB", $2/1024}' "/proc/$pid/status"; }
objects() { # kind
  python3 - "$1" "$N" <<'PY'
import json, sys
kind, n = sys.argv[1], int(sys.argv[2])
def obj(i):
    a = f"a{i:05d}"
    if kind == "agents":
        return {"apiVersion": "agentid.dev/v1alpha1", "kind": "AgentIdentity", "metadata": {"name": a},
                "spec": {"owner": "team-bench", "audiences": ["tools.bench.local"]}}
    if kind == "grants":
        return {"apiVersion": "agentid.dev/v1alpha1", "kind": "ToolGrant", "metadata": {"name": f"g{i:05d}"},
                "spec": {"agentRef": {"name": a}, "validUntil": "2099-01-01T00:00:00Z",
                         "kubernetesRules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]}]}}
    return {"apiVersion": "agentid.dev/v1alpha1", "kind": "AgentTask", "metadata": {"name": f"t{i:05d}"},
            "spec": {"agentRef": {"name": a}, "purpose": "benchmark task", "audiences": ["tools.bench.local"],
                     "ttl": "15m"}}
print(json.dumps({"apiVersion": "v1", "kind": "List", "items": [obj(i) for i in range(n)]}))
PY
}
ready() { # resource: how many have Ready=True
  kubectl -n heap get "$1" -o json | python3 -c 'import json, sys
print(sum(1 for o in json.load(sys.stdin)["items"]
          if any(c.get("type") == "Ready" and c.get("status") == "True" for c in (o.get("status") or {}).get("conditions", []))))'
}
printf '| state | VmRSS |\n|---|---|\n| idle | %s |\n' "$(rss)"
for kind in agents:agentidentities grants:toolgrants tasks:agenttasks; do
  objects "${kind%%:*}" | kubectl create -n heap -f - >/dev/null
  for _ in $(seq 1 600); do [ "$(ready "${kind##*:}")" -ge "$N" ] && break; sleep 2; done
  printf '| + %s %s Ready | %s |\n' "$N" "${kind##*:}" "$(rss)"
done
sleep 20
printf '| 20 s later | %s |\n' "$(rss)"
kill -9 "$pid"; pid=""
sleep 5
if [ -f "$out/heap.zst" ]; then
  heaptrack_print -f "$out/heap.zst" --print-flamegraph "$out/flame.txt" --flamegraph-cost-type leaked 2>/dev/null \
    | grep -E "peak heap|total memory leaked" || true
  python3 bench/heap/aggregate.py "$out/flame.txt"
fi
