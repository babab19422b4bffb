#!/usr/bin/env bash
# agentid's decision point and Open Policy Agent side by side on the same 1,000 agents × 20 grants.
#
#   bench/opa/run.sh          `make bench-pdp`: AuthZEN over HTTPS (benches/pdp_load.rs)
#   bench/opa/run.sh grpc     `make bench-pdp-grpc`: Envoy ext_authz v3 over gRPC, driven by ghz
#                             (benches/pdp_grpc_load.rs)
#
# AuthZEN: builds OPA from its Go module if needed (e2e/tools/build-opa.sh, cached in .cache/bin/opa), then
# runs benches/pdp_load.rs with AGENTID_BENCH_OPA set. The bench writes the OPA data (generated from the
# same ToolGrant objects it loads into agentid), the TLS certificate and two sample inputs into
# target/tmp/pdp-bench-opa/, starts `opa run --server` on 127.0.0.1 with bench/opa/policy.rego, checks that
# both engines give the same decisions and reasons, and prints one table. About a minute.
#
# gRPC: builds ghz and grpcurl (e2e/tools/build.sh) and OPA with its Envoy plugin (e2e/tools/build-opa-envoy.sh,
# .cache/bin/opa-envoy) if needed, then runs benches/pdp_grpc_load.rs with AGENTID_BENCH_OPA_ENVOY set: OPA
# serves bench/opa/envoy.rego over the plugin's plaintext gRPC, agentid its ext_authz over TLS; both are
# checked to agree, then ghz loads each (data files, CA and OPA data in target/tmp/pdp-bench-grpc/). About
# three minutes.
#
# By hand, after a run (tokens expire after an hour):
#   .cache/bin/opa eval -d bench/opa/policy.rego -d target/tmp/pdp-bench-opa/data.json \
#     -i <(jq .input target/tmp/pdp-bench-opa/input-allow.json) data.agentid.decision
#   .cache/bin/opa eval -d bench/opa/envoy.rego -d target/tmp/pdp-bench-grpc/data.json \
#     -i <(jq '.[0]' target/tmp/pdp-bench-grpc/allow.json) data.agentid.envoy.result
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
bin=${AGENTID_BIN_DIR:-$root/.cache/bin}
case "${1:-authzen}" in
  authzen)
    e2e/tools/build-opa.sh
    AGENTID_BENCH_OPA="$bin/opa" exec "${CARGO:-cargo}" bench --locked --bench pdp_load ;;
  grpc)
    e2e/tools/build.sh ghz
    e2e/tools/build.sh grpcurl
    e2e/tools/build-opa-envoy.sh
    AGENTID_BENCH_GHZ="$bin/ghz" AGENTID_BENCH_GRPCURL="$bin/grpcurl" AGENTID_BENCH_OPA_ENVOY="$bin/opa-envoy" \
      exec "${CARGO:-cargo}" bench --locked --bench pdp_grpc_load ;;
  *) echo "usage: $0 [authzen|grpc]" >&2; exit 2 ;;
esac
