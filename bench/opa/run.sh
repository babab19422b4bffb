#!/usr/bin/env bash
# agentid's decision point and Open Policy Agent side by side on the same 1,000 agents × 20 grants
# (`make bench-pdp`): builds OPA from its Go module if needed (e2e/tools/build-opa.sh, cached in
# .cache/bin/opa), then runs benches/pdp_load.rs with AGENTID_BENCH_OPA set. The bench writes the OPA data
# (generated from the same ToolGrant objects it loads into agentid), the TLS certificate and two sample
# inputs into target/tmp/pdp-bench-opa/, starts `opa run --server` on 127.0.0.1 with bench/opa/policy.rego,
# checks that both engines give the same decisions and reasons, and prints one table. About a minute.
#
# By hand, after a run (tokens expire after an hour):
#   .cache/bin/opa eval -d bench/opa/policy.rego -d target/tmp/pdp-bench-opa/data.json \
#     -i <(jq .input target/tmp/pdp-bench-opa/input-allow.json) data.agentid.decision
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
bin=${AGENTID_BIN_DIR:-$root/.cache/bin}
e2e/tools/build-opa.sh
AGENTID_BENCH_OPA="$bin/opa" exec "${CARGO:-cargo}" bench --locked --bench pdp_load
