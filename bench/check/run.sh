#!/usr/bin/env bash
# `agentid check -` on 10,000 manifests from standard input: wall time and peak memory (RSS), measured
# with /usr/bin/time -v on the release binary. Target (issue 10): <= 1 s and <= 32 MiB.
#
#   bench/check/run.sh            # builds target/release/agentid (cargo build --release --locked) first
#   N=50000 bench/check/run.sh    # another size; RUNS=5 for more runs (the best and the worst are shown)
#
# The input is what a rendered GitOps repository looks like: per agent an AgentIdentity, a ToolGrant and
# its Deployment, the rest plain Deployments, one in ten with a static Secret in env (denied), so every
# rule, the agent lookups, the grant lint and the line locator all run. Agents come last, as kustomize
# sorts them, so a workload is judged against an agent defined after it.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
n=${N:-10000}
runs=${RUNS:-3}
bin=target/release/agentid
[ -n "${NO_BUILD:-}" ] || cargo build --release --locked --quiet
[ -x /usr/bin/time ] || { echo "needs /usr/bin/time (apt-get install time)" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
input="$work/manifests.yaml"
python3 - "$n" > "$input" <<'PY'
import sys
n = int(sys.argv[1])
agents = max(1, n // 50)
out = []
workloads = n - 2 * agents
for i in range(workloads):
    agent = i % agents if i % 3 == 0 else None
    bad = i % 10 == 0
    labels = f"{{app: app-{i}" + (f", agentid.dev/agent: agent-{agent}}}" if agent is not None else "}")
    sa = f"agent-agent-{agent}" if agent is not None else f"app-{i}"
    ns = f"team-{(agent * 3) % 20}" if agent is not None else f"team-{i % 20}"
    env = ("        env:\n"
           "          - {name: LOG_LEVEL, value: info}\n"
           "          - {name: UPSTREAM_URL, value: 'https://api.example.com/v1'}\n")
    if bad:
        env += ("          - name: DB_PASSWORD\n"
                "            valueFrom: {secretKeyRef: {name: db, key: password}}\n")
    out.append(f"""apiVersion: apps/v1
kind: Deployment
metadata:
  name: app-{i}
  namespace: {ns}
  labels: {{app: app-{i}}}
spec:
  replicas: 2
  selector: {{matchLabels: {{app: app-{i}}}}}
  template:
    metadata:
      labels: {labels}
    spec:
      serviceAccountName: {sa}
      automountServiceAccountToken: false
      containers:
      - name: app
        image: registry.example.com/app-{i}:1.{i % 7}.0
        args: [--port=8080, --log-format=json]
{env}        ports: [{{containerPort: 8080}}]
        resources: {{requests: {{cpu: 100m, memory: 64Mi}}}}
""")
for a in range(agents):
    ns = f"team-{(a * 3) % 20}"
    out.append(f"""apiVersion: agentid.dev/v1alpha1
kind: ToolGrant
metadata: {{name: agent-{a}-tools, namespace: {ns}}}
spec:
  agentRef: {{name: agent-{a}}}
  tools:
  - {{name: crm.read, actions: [read], destinations: ["https://crm.internal/api/accounts/"], maxDataSensitivity: internal}}
  validUntil: "2030-01-01T00:00:00Z"
""")
    out.append(f"""apiVersion: agentid.dev/v1alpha1
kind: AgentIdentity
metadata: {{name: agent-{a}, namespace: {ns}}}
spec:
  owner: team-{a % 20}
  audiences: [https://tools.example.com]
  tokenTTL: 15m
""")
sys.stdout.write("---\n".join(out))
PY
docs=$(grep -c '^kind:' "$input")
size=$(du -k "$input" | cut -f1)

printf '%s manifests, %s KiB of YAML on stdin; %s\n' "$docs" "$size" "$($bin version)"
printf '%-6s %-10s %-12s %-6s %s\n' run "wall (s)" "peak RSS" exit "output"
for r in $(seq 1 "$runs"); do
  code=0
  /usr/bin/time -v -o "$work/time" "$bin" check - < "$input" > "$work/out" 2>"$work/err" || code=$?
  wall=$(sed -n 's/.*Elapsed (wall clock) time (h:mm:ss or m:ss): //p' "$work/time")
  rss=$(sed -n 's/.*Maximum resident set size (kbytes): //p' "$work/time")
  printf '%-6s %-10s %-12s %-6s %s\n' "$r" "$wall" "$((rss / 1024)) MiB" "$code" "$(tail -n 1 "$work/out")"
done
[ -s "$work/err" ] && { echo "stderr:"; head -5 "$work/err"; }
exit 0
