#!/usr/bin/env bash
# agentid side by side with what a user would pick instead (`make bench-peers`, issue 11):
#
#   1. Admission latency through a real kube-apiserver (benches/peers.rs): no policy / the
#      ValidatingAdmissionPolicy bench/peers/vap.yaml / agentid's webhook in enforce mode / a null webhook
#      on agentid's listener (the webhook protocol's own cost), interleaved, at
#      concurrency 1 and 16; p50/p90/p99 and the latency each adds to no policy.
#   2. `agentid check` and conftest (bench/peers/rego/policy.rego) on the same 10,000 generated manifests
#      (bench/peers/gen.py): agreement on every workload manifest first (bench/peers/agree.py), then wall
#      time, CPU time and peak RSS (/usr/bin/time -v), runs interleaved.
#
#   bench/peers/run.sh              both
#   bench/peers/run.sh admission    section 1 only;   bench/peers/run.sh check   section 2 only
#   N=50000 RUNS=5 bench/peers/run.sh check;          AGENTID_PEERS_ROUNDS=20 bench/peers/run.sh admission
#   NO_BUILD=1 ...                  use the binaries already built (target/release/agentid, the bench)
#
# The VAP and the Rego implement the same rules: the structural ones (static-secret-env,
# static-secret-envfrom, static-secret-volume, default-service-account) and the literal-key detectors of
# hardcoded-credential. Only agentid judges unknown-agent, shared-service-account, long-lived-token,
# agent-use-denied, the heuristic detectors, UPDATEs by new violations only, and exceptions (the list is
# in bench/peers/vap.yaml).
#
# Section 1 starts a private control plane (etcd + kube-apiserver) in $AGENTID_PEERS_CLUSTER_DIR (default
# .cache/peers-cluster; never the dev cluster, never the one of `make bench-cluster`) and always stops it.
# Tools: the control plane from e2e/tools/build.sh, conftest from e2e/tools/build-conftest.sh, both cached
# in .cache/bin.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
export PATH="$root/.cache/bin:$PATH"
what=${1:-all}
case "$what" in all|admission|check) ;; *) echo "usage: $0 [all|admission|check]" >&2; exit 2 ;; esac
started=$SECONDS
[ -x /usr/bin/time ] || { echo "needs /usr/bin/time (apt-get install time)" >&2; exit 1; }

echo "== source: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD 2>/dev/null || echo ' + uncommitted changes')"
echo "== machine: $(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg)"
if [ -z "${NO_BUILD:-}" ]; then
  echo "== building the release binary"
  cargo build --release --locked --quiet
fi

check_section() {
  e2e/tools/build-conftest.sh
  local n=${N:-10000} runs=${RUNS:-3} work
  work=$(mktemp -d)
  trap 'rm -rf "$work"' RETURN
  python3 bench/peers/gen.py "$n" "$work/manifests.yaml" "$work/expected.tsv"
  local agentid=(target/release/agentid check --output json "$work/manifests.yaml")
  local conftest=(conftest test --policy bench/peers/rego --no-color --output json "$work/manifests.yaml")
  echo
  echo "# Offline: agentid check vs conftest $(conftest --version | head -1 | sed 's/Conftest: //') on $n manifests ($(du -k "$work/manifests.yaml" | cut -f1) KiB of YAML)"
  echo
  echo '```'
  echo "agentid:  ${agentid[*]/$work\//}"
  echo "conftest: ${conftest[*]/$work\//}"
  echo '```'
  # Agreement first: both judge the same file, exit 1 = something denied (expected: a quarter is bad).
  "${agentid[@]}" > "$work/agentid.json" || [ $? -eq 1 ]
  "${conftest[@]}" > "$work/conftest.json" || [ $? -eq 1 ]
  python3 bench/peers/agree.py "$work/agentid.json" "$work/conftest.json" "$work/expected.tsv"
  echo
  echo "| run | tool | wall s | CPU s (user+sys) | peak RSS MiB |"
  echo "|---|---|---|---|---|"
  local r tool
  for r in $(seq 1 "$runs"); do
    for tool in agentid conftest; do
      local -n cmd=$tool
      /usr/bin/time -v -o "$work/time" "${cmd[@]}" > /dev/null 2>"$work/err" || true
      awk -v r="$r" -v t="$tool" -F': ' '
        /Elapsed \(wall clock\)/ { n = split($2, p, ":"); wall = (n == 3) ? p[1]*3600 + p[2]*60 + p[3] : p[1]*60 + p[2] }
        /User time/ { u = $2 } /System time/ { s = $2 } /Maximum resident/ { m = $2 }
        END { printf "| %s | %s | %.2f | %.2f | %.0f |\n", r, t, wall, u + s, m / 1024 }' "$work/time" | tee -a "$work/rows"
    done
  done
  # Medians, and how many times faster / smaller agentid is.
  awk -F' *\\| *' '{ w[$3] = w[$3] " " $4; c[$3] = c[$3] " " $5; m[$3] = m[$3] " " $6 }
    function med(s,   a, n, i, j, t) { n = split(substr(s, 2), a, " ");
      for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] + 0 < a[i] + 0) { t = a[i]; a[i] = a[j]; a[j] = t }
      return a[int((n + 1) / 2)] }
    END { aw = med(w["agentid"]); cw = med(w["conftest"]); ac = med(c["agentid"]); cc = med(c["conftest"]);
      am = med(m["agentid"]); cm = med(m["conftest"]);
      printf "| **median** | agentid | %.2f | %.2f | %.0f |\n| **median** | conftest | %.2f | %.2f | %.0f |\n", aw, ac, am, cw, cc, cm;
      printf "\nagentid is %.1f× faster (wall), uses %.1f× less CPU and %.1f× less peak memory.\n", cw / aw, cc / ac, cm / am }' "$work/rows"
  echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
}

admission_section() {
  for b in etcd kube-apiserver kubectl; do
    if [ ! -x "$root/.cache/bin/$b" ]; then
      echo "== building the local control plane tools (missing $b)"
      e2e/tools/build.sh all
      break
    fi
  done
  export AGENTID_CLUSTER_DIR="${AGENTID_PEERS_CLUSTER_DIR:-$root/.cache/peers-cluster}"
  cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    local f
    for f in "$AGENTID_CLUSTER_DIR/pids/agentid-variant" "$AGENTID_CLUSTER_DIR/pids/null-webhook"; do
      if [ -f "$f" ]; then kill "$(cat "$f")" 2>/dev/null || true; rm -f "$f"; fi
    done
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
  target/release/agentid crdgen | kubectl apply --server-side -f - >/dev/null
  kubectl wait --for condition=Established --timeout=60s \
    crd/agentidentities.agentid.dev crd/toolgrants.agentid.dev crd/agenttasks.agentid.dev >/dev/null
  echo "== cargo bench --features e2e --bench peers"
  cargo bench --locked --quiet --features e2e --bench peers
}

if [ "$what" != admission ]; then check_section; fi
if [ "$what" != check ]; then admission_section; else echo "== total runtime $((SECONDS - started)) s"; fi
