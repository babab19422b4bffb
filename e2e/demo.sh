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

# A real node (containerd, kubelet, kube-proxy: e2e/node.sh) when this machine can run one, so the demo
# ends with an agent that really runs; AGENTID_NODE=0 leaves it out, AGENTID_NODE=1 requires it.
if [ -z "${AGENTID_NODE:-}" ]; then
  if e2e/node.sh preflight >/dev/null; then AGENTID_NODE=1; else AGENTID_NODE=0; fi
fi
export AGENTID_NODE
if [ "$AGENTID_NODE" = 1 ]; then e2e/tools/node-packages.sh; fi
e2e/cluster.sh up
export KUBECONFIG="$dir/kubeconfig"
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
# The broker and the decision point listen where pods reach this machine when a node runs (the bridge
# address the apiserver also uses); the certificate names localhost, which clients ask for.
listen_ip=127.0.0.1
if [ "$AGENTID_NODE" = 1 ]; then listen_ip=$(e2e/node.sh api-host); fi

say "installing the CRDs"
kubectl apply --server-side --field-manager=agentid-demo -R -f crds/
kubectl wait --for condition=Established --timeout=30s -R -f crds/ >/dev/null

say "starting the operator (logs: $dir/logs/agentid.log)"
if [ -f "$dir/pids/agentid" ] && kill -0 "$(cat "$dir/pids/agentid")" 2>/dev/null; then
  kill "$(cat "$dir/pids/agentid")"; sleep 1
fi
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
probe_port=$(free_port)
webhook_port=$(free_port)
broker_port=$(free_port)
pdp_port=$(free_port)
kubectl create namespace agentid-system --dry-run=client -o yaml | kubectl apply -f - >/dev/null
# No Service routes to a process on this machine: the webhook is registered by URL.
setsid target/release/agentid run --operator-namespace agentid-system \
  --probe-addr "127.0.0.1:$probe_port" \
  --webhook-addr "127.0.0.1:$webhook_port" --webhook-url "https://127.0.0.1:$webhook_port" \
  --broker-addr "$listen_ip:$broker_port" --pdp-addr "$listen_ip:$pdp_port" \
  --webhook-client-ca-file "$dir/pki/webhook-client-ca.crt" \
  >"$dir/logs/agentid.log" 2>&1 </dev/null &
echo $! > "$dir/pids/agentid"
for _ in $(seq 1 100); do curl -fsS "http://127.0.0.1:$probe_port/readyz" >/dev/null 2>&1 && break; sleep 0.2; done
curl -fsS "http://127.0.0.1:$probe_port/readyz" >/dev/null || { tail -20 "$dir/logs/agentid.log"; exit 1; }

say "applying config/samples/"
kubectl apply -f config/samples/agentidentity.yaml
kubectl apply -f config/samples/toolgrant.yaml
kubectl wait agentidentity/triage-bot -n agents --for=condition=Ready --timeout=60s
kubectl wait toolgrant/triage-bot-tools -n agents --for=jsonpath='{.status.phase}'=Active --timeout=60s >/dev/null

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
say "a task: its token comes from the broker and dies with the task"
kubectl apply -f config/samples/agenttask.yaml
kubectl wait agenttask/triage-ticket-42 -n agents --for=jsonpath='{.status.phase}'=Active --timeout=60s >/dev/null
kubectl get agenttasks -n agents
ca="$dir/agentid-ca.crt"
kubectl get secret agentid-webhook-tls -n agentid-system -o jsonpath='{.data.ca\.crt}' | base64 -d > "$ca"
# What the agent's pod would have mounted: its own short-lived token for the broker.
own=$(kubectl create token agent-triage-bot -n agents --audience agentid --duration 10m)
task_token=$(curl -sS --cacert "$ca" -X POST -H "Authorization: Bearer $own" \
  "https://localhost:$broker_port/v1/tasks/agents/triage-ticket-42/token" --resolve "localhost:$broker_port:$listen_ip" |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')
echo "task token fetched (${#task_token} bytes; never stored, never logged)"

ask() { # destination
  curl -sS --cacert "$ca" --resolve "localhost:$pdp_port:$listen_ip" -H "Authorization: Bearer $task_token" \
    -H 'Content-Type: application/json' "https://localhost:$pdp_port/access/v1/evaluation" \
    -d "{\"action\": {\"name\": \"create\"}, \"resource\": {\"type\": \"tool\", \"id\": \"github.create_issue\", \"properties\": {\"destination\": \"$1\"}}}"
  echo
}
say "decision point (AuthZEN): the granted call"
ask https://api.github.com/repos/acme/payments/issues
say "decision point: an ungranted destination, denied with its reason"
ask https://api.github.com/repos/acme/billing/issues
say "through nginx, the enforcement point in front of a tool (the CRM): e2e/nginx/agentid-pep.conf.example"
kubectl apply -f - <<'EOF'
apiVersion: agentid.dev/v1alpha1
kind: ToolGrant
metadata: {name: triage-bot-crm, namespace: agents}
spec:
  agentRef: {name: triage-bot}
  tools: [{name: crm, actions: [read], destinations: ['http://crm.local/api/'], maxDataSensitivity: internal}]
  validUntil: "2030-01-01T00:00:00Z"
EOF
kubectl wait toolgrant/triage-bot-crm -n agents --for=jsonpath='{.status.phase}'=Active --timeout=60s >/dev/null
nginx_bin=$(e2e/tools/nginx.sh)
for p in nginx upstream; do [ -f "$dir/pids/$p" ] && kill "$(cat "$dir/pids/$p")" 2>/dev/null || true; done
ndir="$dir/nginx"; rm -rf "$ndir"; mkdir -p "$ndir/www/api" "$ndir/www/other"
echo '{"accounts": ["acme", "globex"]}' > "$ndir/www/api/accounts"
echo 'not for agents' > "$ndir/www/other/admin"
upstream_port=$(free_port); nginx_port=$(free_port)
setsid python3 -m http.server "$upstream_port" --bind 127.0.0.1 --directory "$ndir/www" >"$ndir/upstream.log" 2>&1 </dev/null &
echo $! > "$dir/pids/upstream"
for _ in $(seq 1 50); do curl -s -o /dev/null "http://127.0.0.1:$upstream_port/" && break; sleep 0.1; done
cp "$ca" "$ndir/agentid-ca.crt"
sed -e "s|listen 80;|listen 127.0.0.1:$nginx_port;|" -e "s|http://crm-backend:8080|http://127.0.0.1:$upstream_port|" \
  -e "s|https://agentid.agentid-system.svc:8445/forward-auth|https://$listen_ip:$pdp_port/forward-auth|" \
  -e "s|proxy_ssl_name agentid.agentid-system.svc;|proxy_ssl_name localhost;|" \
  -e "s|/etc/nginx/agentid-ca.crt|$ndir/agentid-ca.crt|" e2e/nginx/agentid-pep.conf.example > "$ndir/agentid-pep.conf"
sed -e "s|@DIR@|$ndir|g" e2e/nginx/test-nginx.conf > "$ndir/nginx.conf"
setsid "$nginx_bin" -p "$ndir" -e "$ndir/error.log" -c "$ndir/nginx.conf" >/dev/null 2>&1 </dev/null &
echo $! > "$dir/pids/nginx"
for _ in $(seq 1 50); do curl -s -o /dev/null "http://127.0.0.1:$nginx_port/" && break; sleep 0.1; done
through_nginx() { # path
  curl -s -o /dev/null -w "GET http://crm.local$1 -> %{http_code} %header{x-agentid-reason}\n" \
    -H "Authorization: Bearer $task_token" -H 'Host: crm.local' "http://127.0.0.1:$nginx_port$1"
}
through_nginx /api/accounts
through_nginx /other/admin
echo "(the CRM got $(grep -c 'GET /api/accounts' "$ndir/upstream.log") call, none to /other/; nginx strips the agent's token before the CRM — tests/e2e_nginx.rs checks that)"

if [ "$AGENTID_NODE" = 1 ]; then
  say "a real agent on the node: examples/sample-agent.rs in a pod, with its own ServiceAccount and a projected token"
  e2e/node.sh load sample-agent
  kubectl apply -f - <<'EOF'
apiVersion: v1
kind: Namespace
metadata: {name: tools}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: search, namespace: tools}
spec:
  selector: {matchLabels: {app: search}}
  template:
    metadata: {labels: {app: search}}
    spec:
      containers:
      - name: httpd
        image: agentid.local/testbox:1
        imagePullPolicy: Never
        command: [sh, -c, 'echo found > /tmp/index.html && exec httpd -f -p 8080 -h /tmp']
---
apiVersion: v1
kind: Service
metadata: {name: search, namespace: tools}
spec: {selector: {app: search}, ports: [{port: 80, targetPort: 8080}]}
EOF
  tool_ip=$(kubectl get service search -n tools -o jsonpath='{.spec.clusterIP}')
  kubectl apply -f - <<EOF
apiVersion: agentid.dev/v1alpha1
kind: ToolGrant
metadata: {name: triage-bot-search, namespace: agents}
spec:
  agentRef: {name: triage-bot}
  tools: [{name: search, actions: [query], destinations: ['http://$tool_ip/'], maxDataSensitivity: internal}]
  validUntil: "2030-01-01T00:00:00Z"
EOF
  kubectl wait toolgrant/triage-bot-search -n agents --for=jsonpath='{.status.phase}'=Active --timeout=60s >/dev/null
  # How the agent trusts agentid's certificate: the CA, published to its namespace.
  kubectl create configmap agentid-ca -n agents --from-file=ca.crt="$ca" --dry-run=client -o yaml | kubectl apply -f -
  kubectl apply -f - <<EOF
apiVersion: apps/v1
kind: Deployment
metadata: {name: sample-agent, namespace: agents}
spec:
  selector: {matchLabels: {app: sample-agent}}
  template:
    metadata: {labels: {app: sample-agent, agentid.dev/agent: triage-bot}}
    spec:
      serviceAccountName: agent-triage-bot
      automountServiceAccountToken: false
      containers:
      - name: agent
        image: $(e2e/tools/image.sh ref sample-agent)
        imagePullPolicy: Never
        securityContext: {readOnlyRootFilesystem: true, runAsNonRoot: true, allowPrivilegeEscalation: false, capabilities: {drop: [ALL]}}
        env:
        - {name: AGENTID_BROKER_ADDR, value: "$listen_ip:$broker_port"}
        - {name: AGENTID_PDP_ADDR, value: "$listen_ip:$pdp_port"}
        - {name: AGENTID_SERVER_NAME, value: localhost}
        - {name: AGENTID_TASK, value: agents/triage-ticket-42}
        - {name: TOOL, value: search}
        - {name: ACTION, value: query}
        - {name: DESTINATION, value: "http://$tool_ip/"}
        - {name: TOOL_ADDR, value: "$tool_ip:80"}
        - {name: INTERVAL_MS, value: "2000"}
        volumeMounts:
        - {name: token, mountPath: /var/run/agentid, readOnly: true}
        - {name: ca, mountPath: /etc/agentid-ca, readOnly: true}
      volumes:
      - name: token
        projected:
          sources:
          - serviceAccountToken: {audience: agentid, expirationSeconds: 600, path: token}
      - name: ca
        configMap: {name: agentid-ca}
EOF
  kubectl rollout status deployment/search -n tools --timeout=90s >/dev/null
  kubectl rollout status deployment/sample-agent -n agents --timeout=90s
  sleep 5
  echo "its log (one JSON line per step; tokens never appear, only their length):"
  kubectl logs deployment/sample-agent -n agents --tail 6
fi

say "the task is completed: the same granted call is denied at the next decision"
kubectl patch agenttask triage-ticket-42 -n agents --type merge -p '{"spec":{"completed":true}}'
sleep 1
ask https://api.github.com/repos/acme/payments/issues
through_nginx /api/accounts
if [ "$AGENTID_NODE" = 1 ]; then
  sleep 4
  echo "the agent in its pod: refused, and no new task token"
  kubectl logs deployment/sample-agent -n agents --tail 3
fi
say "offline review of a grant in a pull request: agentid decide"
target/release/agentid decide --agent agents/triage-bot --tool github.create_issue --action create \
  --destination https://api.github.com/repos/acme/billing/issues --task triage-ticket-42 config/samples/ || true

say "offline: agentid check config/samples/ (what GitOps CI runs)"
target/release/agentid check config/samples/ || true

cat <<EOM

The control plane and the operator keep running:
  export KUBECONFIG=$dir/kubeconfig PATH=$root/.cache/bin:\$PATH
  kubectl get agentid -A          # AgentIdentities, ToolGrants and AgentTasks
  curl -s http://127.0.0.1:$probe_port/metrics
Stop everything with: make demo-down
EOM
