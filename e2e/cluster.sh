#!/usr/bin/env bash
# A real, local Kubernetes control plane for the demo and the integration tests:
# etcd + kube-apiserver on 127.0.0.1 (free ports), generated PKI, RBAC,
# a ServiceAccount issuer (TokenRequest/TokenReview work). No controller-manager,
# no scheduler, no kubelet.
#
#   e2e/cluster.sh up      start (idempotent: a running cluster is left alone)
#   e2e/cluster.sh down    stop exactly the processes `up` started
#   e2e/cluster.sh status  print whether it runs
#   e2e/cluster.sh restart apiserver|etcd
#                          stop that process and start it again with the same flags and port (etcd
#                          keeps its data): an outage for fault tests (tests/e2e_restart.rs)
#
# State lives in $AGENTID_CLUSTER_DIR (default <repo>/.cluster): kubeconfig,
# pki/, logs/ (etcd.log, kube-apiserver.log), pids/, args/ (each process's command line). The
# apiserver presents the client certificate pki/webhook-client.crt (CA pki/webhook-client-ca.crt) to
# every admission webhook it calls.
#
# AGENTID_NODE=1 adds a real node (e2e/node.sh: containerd, kubelet, kube-proxy, controller manager,
# scheduler); the apiserver then listens on the node's bridge address, not on 127.0.0.1. `down` takes
# a node down too (whatever AGENTID_NODE says) and fails when the host is not restored.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
bin=${AGENTID_BIN_DIR:-$root/.cache/bin}
dir=${AGENTID_CLUSTER_DIR:-$root/.cluster}
pki=$dir/pki logs=$dir/logs pids=$dir/pids

log() { printf '[cluster] %s\n' "$*" >&2; }

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

alive() { [ -f "$pids/$1" ] && kill -0 "$(cat "$pids/$1")" 2>/dev/null; }

gen_pki() {
  [ -f "$pki/admin.crt" ] && return
  mkdir -p "$pki"
  log "generating PKI in $pki"
  (
    cd "$pki"
    openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 3650 \
      -subj "/CN=agentid-local-ca" 2>/dev/null
    cat > serving.ext <<EOF
basicConstraints=CA:FALSE
keyUsage=digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes.default.svc
EOF
    openssl req -newkey rsa:2048 -nodes -keyout serving.key -out serving.csr -subj "/CN=kube-apiserver" 2>/dev/null
    openssl x509 -req -in serving.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out serving.crt \
      -days 3650 -extfile serving.ext 2>/dev/null
    printf 'basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n' > client.ext
    openssl req -newkey rsa:2048 -nodes -keyout admin.key -out admin.csr -subj "/O=system:masters/CN=admin" 2>/dev/null
    openssl x509 -req -in admin.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out admin.crt \
      -days 3650 -extfile client.ext 2>/dev/null
    openssl genrsa -out sa.key 2048 2>/dev/null
    openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
    rm -f ./*.csr ./*.srl
  )
}

# The client certificate the apiserver presents when it calls admission webhooks (its own CA, so a
# webhook that trusts it trusts nothing else), and the admission configuration that hands it over.
gen_webhook_client() {
  [ -f "$pki/webhook-client.crt" ] || (
    cd "$pki"
    log "generating the apiserver's webhook client certificate"
    openssl req -x509 -newkey rsa:2048 -nodes -keyout webhook-client-ca.key -out webhook-client-ca.crt -days 3650 \
      -subj "/CN=agentid-local-webhook-client-ca" 2>/dev/null
    printf 'basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n' > wclient.ext
    openssl req -newkey rsa:2048 -nodes -keyout webhook-client.key -out webhook-client.csr \
      -subj "/CN=kube-apiserver-webhook-client" 2>/dev/null
    openssl x509 -req -in webhook-client.csr -CA webhook-client-ca.crt -CAkey webhook-client-ca.key -CAcreateserial \
      -out webhook-client.crt -days 3650 -extfile wclient.ext 2>/dev/null
    rm -f ./*.csr ./*.srl wclient.ext
  )
  cat > "$dir/webhook-kubeconfig" <<EOF
apiVersion: v1
kind: Config
users:
- name: '*'
  user:
    client-certificate: $pki/webhook-client.crt
    client-key: $pki/webhook-client.key
EOF
  cat > "$dir/admission-config.yaml" <<EOF
apiVersion: apiserver.config.k8s.io/v1
kind: AdmissionConfiguration
plugins:
- name: ValidatingAdmissionWebhook
  configuration:
    apiVersion: apiserver.config.k8s.io/v1
    kind: WebhookAdmissionConfiguration
    kubeConfigFile: $dir/webhook-kubeconfig
- name: MutatingAdmissionWebhook
  configuration:
    apiVersion: apiserver.config.k8s.io/v1
    kind: WebhookAdmissionConfiguration
    kubeConfigFile: $dir/webhook-kubeconfig
EOF
}

# The apiserver's audit webhook backend: agents' (service accounts') requests at Metadata level — no
# bodies, so no Secret values — posted in batches to agentid's /audit/apiserver on a port fixed here
# (pki/audit-sink-port), with the same client certificate the apiserver shows admission webhooks. The
# agentid that should receive them (tests/e2e_audit.rs) listens there with a certificate of pki/ca.crt;
# when nothing listens, the batches are dropped after a short backoff. docs/audit.md says how to wire the
# same on a self-managed cluster.
gen_audit_sink() { # port
  echo "$1" > "$pki/audit-sink-port"
  cat > "$dir/audit-policy.yaml" <<EOF
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
# The control plane's own controllers (node mode) are not agents.
- level: None
  userGroups: ["system:serviceaccounts:kube-system"]
- level: Metadata
  userGroups: ["system:serviceaccounts"]
- level: None
EOF
  cat > "$dir/audit-webhook-kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: agentid-audit
  cluster:
    server: https://127.0.0.1:$1/audit/apiserver
    certificate-authority: $pki/ca.crt
users:
- name: kube-apiserver
  user:
    client-certificate: $pki/webhook-client.crt
    client-key: $pki/webhook-client.key
contexts:
- name: agentid-audit
  context: {cluster: agentid-audit, user: kube-apiserver}
current-context: agentid-audit
EOF
}

write_kubeconfig() { # port
  cat > "$dir/kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: agentid-local
  cluster:
    server: https://${2:-127.0.0.1}:$1
    certificate-authority: $pki/ca.crt
users:
- name: admin
  user:
    client-certificate: $pki/admin.crt
    client-key: $pki/admin.key
contexts:
- name: agentid-local
  context: {cluster: agentid-local, user: admin}
current-context: agentid-local
EOF
}

wait_for() { # what seconds command...
  local what=$1 secs=$2; shift 2
  local deadline=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    if [ $SECONDS -ge $deadline ]; then
      log "$what not ready after ${secs}s; last log lines:"
      tail -n 30 "$logs/$what.log" >&2 || true
      return 1
    fi
    sleep 0.2
  done
}

# The command line of a control-plane process, one argument per line in $dir/args/<name>, so that
# `restart` starts it again with exactly the same flags and ports.
record() { # name command args...
  local name=$1; shift
  mkdir -p "$dir/args"
  printf '%s\n' "$@" > "$dir/args/$name"
}

# Starts a process from its recorded command line, detached, its pid in $pids/<name>, appending to
# $logs/<name>.log (so a restart keeps the log of the run before).
launch() { # name
  local cmd
  mapfile -t cmd < "$dir/args/$1"
  setsid "${cmd[@]}" >>"$logs/$1.log" 2>&1 </dev/null &
  echo $! > "$pids/$1"
}

arg_of() { # name flag: the value that follows flag in name's recorded command line
  local cmd i
  mapfile -t cmd < "$dir/args/$1"
  for ((i = 0; i + 1 < ${#cmd[@]}; i++)); do
    if [ "${cmd[i]}" = "$2" ]; then printf '%s\n' "${cmd[i + 1]}"; return; fi
  done
  return 1
}

wait_ready() { # name
  case $1 in
    etcd) wait_for etcd 30 curl -fsS "$(arg_of etcd --advertise-client-urls)/health" ;;
    kube-apiserver)
      wait_for kube-apiserver 60 curl -fsS --cacert "$pki/ca.crt" --cert "$pki/admin.crt" --key "$pki/admin.key" \
        "$(awk '$1 == "server:" {print $2; exit}' "$dir/kubeconfig")/readyz" ;;
  esac
}

up() {
  for b in etcd kube-apiserver kubectl; do
    [ -x "$bin/$b" ] || { log "missing $bin/$b: run e2e/tools/build.sh (make tools)"; exit 1; }
  done
  if alive etcd && alive kube-apiserver; then
    log "already running ($(grep server: "$dir/kubeconfig" | awk '{print $2}'))"; return
  fi
  down >/dev/null 2>&1 || true
  mkdir -p "$logs" "$pids"
  gen_pki
  gen_webhook_client
  # AGENTID_NODE=1: the flags a node needs (from e2e/node.sh, which also snapshots the host and
  # creates the bridge the apiserver listens on) replace the apiserver-only ones.
  local api_host=127.0.0.1 mode_args=(--disable-admission-plugins ServiceAccount --endpoint-reconciler-type none)
  if [ "${AGENTID_NODE:-}" = 1 ]; then
    local node_args
    node_args=$("$here/node.sh" apiserver-args)
    mapfile -t mode_args <<<"$node_args"
    api_host=$("$here/node.sh" api-host)
  fi
  local started=$SECONDS
  local etcd_port peer_port api_port
  etcd_port=$(free_port); peer_port=$(free_port); api_port=$(free_port)
  gen_audit_sink "$(free_port)"
  rm -rf "$dir/etcd-data"
  record etcd "$bin/etcd" --name agentid-local --data-dir "$dir/etcd-data" \
    --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
    --listen-peer-urls "http://127.0.0.1:$peer_port" --initial-advertise-peer-urls "http://127.0.0.1:$peer_port" \
    --initial-cluster "agentid-local=http://127.0.0.1:$peer_port" \
    --unsafe-no-fsync=true --quota-backend-bytes=4294967296 --log-level=warn
  : > "$logs/etcd.log"
  launch etcd
  wait_ready etcd

  record kube-apiserver "$bin/kube-apiserver" \
    --etcd-servers "http://127.0.0.1:$etcd_port" \
    --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$api_port" \
    --tls-cert-file "$pki/serving.crt" --tls-private-key-file "$pki/serving.key" \
    --client-ca-file "$pki/ca.crt" \
    --authorization-mode RBAC \
    --service-account-issuer https://kubernetes.default.svc \
    --service-account-key-file "$pki/sa.pub" --service-account-signing-key-file "$pki/sa.key" \
    --api-audiences https://kubernetes.default.svc \
    --service-cluster-ip-range 10.0.0.0/24 \
    --allow-privileged=true \
    --admission-control-config-file "$dir/admission-config.yaml" \
    --audit-policy-file "$dir/audit-policy.yaml" --audit-webhook-config-file "$dir/audit-webhook-kubeconfig" \
    --audit-webhook-mode batch --audit-webhook-batch-max-wait 200ms --audit-webhook-initial-backoff 200ms \
    --enable-priority-and-fairness=false \
    --profiling=false \
    "${mode_args[@]}"
  : > "$logs/kube-apiserver.log"
  launch kube-apiserver
  write_kubeconfig "$api_port" "$api_host"
  wait_ready kube-apiserver
  log "ready in $((SECONDS - started))s: KUBECONFIG=$dir/kubeconfig (https://$api_host:$api_port)"
  if [ "${AGENTID_NODE:-}" = 1 ]; then "$here/node.sh" up; fi
}

stop_one() { # name
  local f=$pids/$1
  [ -f "$f" ] || return 0
  local pid; pid=$(cat "$f")
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
    log "stopped $1 (pid $pid)"
  fi
  rm -f "$f"
}

down() {
  # The node first, while the apiserver still runs: its kubelet tears the pods down.
  local node_rc=0
  "$here/node.sh" down || node_rc=$?
  stop_one nginx
  stop_one upstream
  stop_one agentid
  stop_one kube-apiserver
  stop_one etcd
  rm -rf "$dir/etcd-data"
  return $node_rc
}

# Stops one process of a running cluster (SIGTERM, by its recorded pid; SIGKILL after 5 s) and starts
# it again with the same command line (same flags, same port, etcd with its data), waiting until it is
# ready again. The clients of the apiserver (and the apiserver, of etcd) see an outage, not a new cluster.
restart() { # etcd|kube-apiserver
  local name=$1
  if [ ! -f "$pids/$1" ] || [ ! -f "$dir/args/$1" ]; then
    log "$1 is not running in $dir: e2e/cluster.sh up first"; exit 1
  fi
  local started=$SECONDS
  stop_one "$name"
  launch "$name"
  wait_ready "$name"
  log "restarted $name in $((SECONDS - started))s (pid $(cat "$pids/$name"))"
}

status() {
  if alive etcd && alive kube-apiserver; then echo "running: KUBECONFIG=$dir/kubeconfig"; else echo "not running"; return 1; fi
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  restart)
    case "${2:-}" in
      apiserver|kube-apiserver) restart kube-apiserver ;;
      etcd) restart etcd ;;
      *) echo "usage: $0 restart apiserver|etcd" >&2; exit 2 ;;
    esac ;;
  *) echo "usage: $0 up|down|status|restart apiserver|etcd" >&2; exit 2 ;;
esac
