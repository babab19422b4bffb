#!/usr/bin/env bash
# Runs the integration suites of what users install (tests/e2e_webhook, e2e_toolgrant, e2e_task,
# e2e_tokens, e2e_pdp) against agentid installed by its own Helm chart on the real node, instead of an
# in-process operator: 2 replicas from the local image, the webhook registered through the Service, the
# chart's RBAC, leader election. The harness (tests/support/mod.rs) takes AGENTID_E2E_CHART=<namespace>.
#
# Needs the local control plane with the node (AGENTID_NODE=1 e2e/cluster.sh up), KUBECONFIG, and the
# agentid image loaded (e2e/node.sh load agentid). make test runs it after the node tests; by hand:
#   e2e/chart-suites.sh [--test e2e_task ...]      (default: all five suites)
# The release is uninstalled and its namespace deleted afterwards, also on failure.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
export PATH="$root/.cache/bin:$PATH"
: "${KUBECONFIG:?KUBECONFIG of the local control plane}"
ns=${AGENTID_CHART_SUITES_NS:-agentid-chart-suites}
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
suites=("$@")
[ ${#suites[@]} -gt 0 ] || suites=(--test e2e_webhook --test e2e_toolgrant --test e2e_task --test e2e_tokens --test e2e_pdp)

cleanup() {
  helm uninstall agentid -n "$ns" --wait --timeout 60s >/dev/null 2>&1 || true
  # What the release registered at run time, not as part of the chart.
  kubectl delete validatingwebhookconfiguration agentid --ignore-not-found >/dev/null 2>&1 || true
  kubectl delete validatingadmissionpolicybinding,validatingadmissionpolicy \
    agentid-enforcement-label agentid-enforcement-guard --ignore-not-found >/dev/null 2>&1 || true
  kubectl delete namespace "$ns" --ignore-not-found --wait=false >/dev/null 2>&1 || true
}
trap cleanup EXIT INT TERM
cleanup
# A namespace of an earlier run may still be terminating.
kubectl wait --for=delete "namespace/$ns" --timeout=90s >/dev/null 2>&1 || true
kubectl create namespace "$ns" >/dev/null
started=$SECONDS
if ! helm install agentid charts/agentid --namespace "$ns" \
  --set image.repository=agentid.local/agentid --set image.tag="$version" --set image.pullPolicy=Never \
  --wait --timeout 120s >/dev/null; then
  kubectl get pods -n "$ns" -o wide >&2 || true
  kubectl logs -n "$ns" -l app.kubernetes.io/name=agentid --tail 20 >&2 || true
  exit 1
fi
# Ready pods; and the webhook configuration the leader registers, with its caBundle.
for _ in $(seq 1 300); do
  [ -n "$(kubectl get validatingwebhookconfiguration agentid -o jsonpath='{.webhooks[0].clientConfig.caBundle}' 2>/dev/null)" ] && break
  sleep 0.1
done
echo "== agentid $version installed by its chart in $ns ($((SECONDS - started)) s): $(kubectl get pods -n "$ns" -l app.kubernetes.io/name=agentid --no-headers | awk '{print $1 " " $3}' | paste -sd, -)"
AGENTID_E2E_CHART=$ns cargo test --locked --no-fail-fast --features e2e "${suites[@]}" -- --test-threads=1
