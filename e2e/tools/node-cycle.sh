#!/usr/bin/env bash
# Up / test / down cycles of the local node, each checked against the host as it was before `up`
# (e2e/node.sh snapshot: sysctls, nftables, links, addresses, routes, netns, mounts, cgroups, paths,
# processes), independently of the check `down` does itself. Prints a table; exits 1 on the first
# cycle whose tests fail or whose host differs afterwards.
#
#   e2e/tools/node-cycle.sh [CYCLES] [--no-tests] [--bins "TEST-EXECUTABLE..."]
#
# Default: 3 cycles, the tests of tests/e2e_node*.rs (built once up front) with --ignored each time;
# --bins runs already built test executables instead (when the tree does not build right now).
#
# Uses $AGENTID_CLUSTER_DIR (default <repo>/.cache/node-cluster); needs the binaries (make tools),
# the packages (e2e/tools/node-packages.sh) and, for tests/e2e_node_image.rs, target/release/agentid.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
cd "$root"
cycles=3 tests=1 bins=""
while [ $# -gt 0 ]; do
  case $1 in
    --no-tests) tests=0 ;;
    --bins) bins=$2; shift ;;
    *[!0-9]*) echo "usage: $0 [CYCLES] [--no-tests] [--bins \"TEST-EXECUTABLE...\"]" >&2; exit 2 ;;
    *) cycles=$1 ;;
  esac
  shift
done
export AGENTID_CLUSTER_DIR=${AGENTID_CLUSTER_DIR:-$root/.cache/node-cluster}
export PATH="$root/.cache/bin:$PATH" KUBECONFIG=$AGENTID_CLUSTER_DIR/kubeconfig
logdir=$root/.cache/node-cycles
mkdir -p "$logdir"
ms() { date +%s%3N; }

"$here/node-packages.sh"
"$here/build.sh" kube
if [ "$tests" = 1 ] && [ -z "$bins" ]; then
  # The image must come from this source: the chart passes the flags this source's binary knows.
  cargo build --release --locked -q
  bins=$(cargo test --locked --features e2e --test 'e2e_node*' --no-run --message-format=json 2>"$logdir/build.log" |
    python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["test"]:
        print(m["executable"])') || { echo "building the node tests failed: $logdir/build.log" >&2; exit 1; }
fi

printf '%-6s %-9s %-16s %-9s %-9s %-22s %s\n' cycle up_s node_ready tests_s down_s host_after_down result
rc=0
for i in $(seq 1 "$cycles"); do
  e2e/node.sh snapshot > "$logdir/before-$i.txt"
  t=$(ms)
  if ! AGENTID_NODE=1 e2e/cluster.sh up > "$logdir/up-$i.log" 2>&1; then
    printf '%-6s %s\n' "$i" "up FAILED (see $logdir/up-$i.log)"; rc=1
  fi
  up=$(( $(ms) - t ))
  ready=$(sed -n 's/.*Ready \([0-9]*ms\) after the kubelet.*/\1/p' "$logdir/up-$i.log")
  result=ok tst=-
  if [ $rc = 0 ] && [ "$tests" = 1 ]; then
    t=$(ms)
    e2e/tools/image.sh agentid >/dev/null 2>&1 && e2e/node.sh load agentid >/dev/null 2>&1 || true
    : > "$logdir/tests-$i.log"
    for b in $bins; do
      if ! "$b" --ignored >> "$logdir/tests-$i.log" 2>&1; then result="tests FAILED ($logdir/tests-$i.log)"; rc=1; fi
    done
    tst=$(( ($(ms) - t) / 1000 ))
  fi
  t=$(ms)
  e2e/cluster.sh down > "$logdir/down-$i.log" 2>&1 || { result="down FAILED ($logdir/down-$i.log)"; rc=1; }
  down=$(( $(ms) - t ))
  e2e/node.sh snapshot > "$logdir/after-$i.txt"
  if diff -u "$logdir/before-$i.txt" "$logdir/after-$i.txt" > "$logdir/diff-$i.txt"; then host=identical
  else host="$(grep -c '^[-+][^-+]' "$logdir/diff-$i.txt") lines differ"; rc=1; fi
  printf '%-6s %-9s %-16s %-9s %-9s %-22s %s\n' "$i" "$(awk "BEGIN{printf \"%.1f\", $up/1000}")" "${ready:-?}" "$tst" \
    "$(awk "BEGIN{printf \"%.1f\", $down/1000}")" "$host" "$result"
  [ $rc = 0 ] || break
done
exit $rc
