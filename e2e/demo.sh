#!/usr/bin/env bash
# The main job: start the local control plane, install the CRDs, start the
# operator, apply config/samples/ and show what happened. Leaves everything
# running for you to explore; `make demo-down` stops it all.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
export PATH="$root/.cache/bin:$PATH"
export AGENTID_CLUSTER_DIR="${AGENTID_CLUSTER_DIR:-$root/.cluster}"
dir=$AGENTID_CLUSTER_DIR

e2e/cluster.sh up
export KUBECONFIG="$dir/kubeconfig"
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

say "installing the CRDs"
kubectl apply --server-side --field-manager=agentid-demo -f crds/
kubectl wait --for condition=Established --timeout=30s -f crds/ >/dev/null

say "starting the operator (logs: $dir/logs/agentid.log)"
if [ -f "$dir/pids/agentid" ] && kill -0 "$(cat "$dir/pids/agentid")" 2>/dev/null; then
  kill "$(cat "$dir/pids/agentid")"; sleep 1
fi
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
probe_port=$(free_port)
webhook_port=$(free_port)
broker_port=$(free_port)
kubectl create namespace agentid-system --dry-run=client -o yaml | kubectl apply -f - >/dev/null
# No Service routes to a process on this machine: the webhook is registered by URL.
setsid target/release/agentid run --operator-namespace agentid-system \
  --probe-addr "127.0.0.1:$probe_port" \
  --webhook-addr "127.0.0.1:$webhook_port" --webhook-url "https://127.0.0.1:$webhook_port" \
  --broker-addr "127.0.0.1:$broker_port" \
  --webhook-client-ca-file "$dir/pki/webhook-client-ca.crt" \
  >"$dir/logs/agentid.log" 2>&1 </dev/null &
echo $! > "$dir/pids/agentid"
for _ in $(seq 1 100); do curl -fsS "http://127.0.0.1:$probe_port/readyz" >/dev/null 2>&1 && break; sleep 0.2; done
curl -fsS "http://127.0.0.1:$probe_port/readyz" >/dev/null || { tail -20 "$dir/logs/agentid.log"; exit 1; }

say "applying config/samples/"
kubectl apply -f config/samples/agentidentity.yaml
kubectl apply -f config/samples/toolgrant.yaml
kubectl wait agentidentity/triage-bot -n agents --for=condition=Ready --timeout=60s

say "the agent"
kubectl get agentidentities -n agents
say "its dedicated ServiceAccount"
kubectl get serviceaccount agent-triage-bot -n agents \
  -o jsonpath='name: {.metadata.name}{"\n"}spiffe-id: {.metadata.annotations.agentid\.dev/spiffe-id}{"\n"}automountServiceAccountToken: {.automountServiceAccountToken}{"\n"}owner: {.metadata.ownerReferences[0].kind}/{.metadata.ownerReferences[0].name}{"\n"}'
say "status.spiffeID"
kubectl get agentidentity triage-bot -n agents -o jsonpath='{.status.spiffeID}{"\n"}'
say "events"
kubectl get events -n agents --field-selector involvedObject.kind=AgentIdentity
say "grants"
kubectl get toolgrants -n agents

say "admission: a Deployment with a static secret and the default ServiceAccount (namespace agents is enforced)"
kubectl apply -f config/samples/bad-deployment.yaml || true
say "admission: the same agent done right"
kubectl apply -f config/samples/good-deployment.yaml
say "offline: agentid check config/samples/ (what GitOps CI runs)"
target/release/agentid check config/samples/ || true

cat <<EOM

The control plane and the operator keep running:
  export KUBECONFIG=$dir/kubeconfig PATH=$root/.cache/bin:\$PATH
  kubectl get agentid -A          # AgentIdentities, ToolGrants and AgentTasks
  curl -s http://127.0.0.1:$probe_port/metrics
Stop everything with: make demo-down
EOM
