#!/usr/bin/env bash
# A real node for the local control plane of e2e/cluster.sh: containerd, kubelet, kube-proxy,
# kube-controller-manager and kube-scheduler, a bridge CNI. Pods run, Deployments make ReplicaSets,
# Services route, namespaces delete, `default` ServiceAccounts exist, `kubectl logs/exec` work.
# Driven by `AGENTID_NODE=1 e2e/cluster.sh up|down`; the steps on their own:
#
#   e2e/node.sh preflight        exit 0 when this machine can run a node, else say why (make test decides)
#   e2e/node.sh apiserver-args   snapshot the host, create the bridge with the apiserver's address,
#                                generate the node's certificates; print the extra kube-apiserver flags
#   e2e/node.sh api-host         the address the apiserver listens on in node mode
#   e2e/node.sh up               start containerd (own config, socket, root, state), load the images,
#                                start the controller manager, scheduler, kubelet, kube-proxy; wait Ready
#   e2e/node.sh down             let the kubelet tear the pods down, stop what `up` started (by pid),
#                                restore the host (sysctls, nftables, bridge, mounts, cgroups, paths) and
#                                fail when anything differs from the snapshot taken before `up`
#   e2e/node.sh snapshot         print the host state that `down` compares
#   e2e/node.sh load NAME...     build (when changed) and load e2e/tools/image.sh images into containerd
#   e2e/node.sh tag SRC DST      one more name for a loaded image (tests/e2e_node_chart.rs upgrades to it)
#   e2e/node.sh status
#   e2e/node.sh diagnose         why pods do not run: conditions, taints, free disk, warnings, kubelet errors
#
# Every address stays on this machine: the apiserver on $NODE_IP, the pods' gateway on the bridge
# $BRIDGE that this script creates, pods in $POD_CIDR (network namespaces containerd creates),
# Services in $SVC_CIDR.
# Host-global names are distinct: bridge agentidbr0, kube-proxy's KUBE-* chains, /kubepods cgroups.
# State: $AGENTID_CLUSTER_DIR/node (wiped by down), logs in $AGENTID_CLUSTER_DIR/logs, pids in pids/.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
bin=${AGENTID_BIN_DIR:-$root/.cache/bin}
dir=${AGENTID_CLUSTER_DIR:-$root/.cluster}
pki=$dir/pki logs=$dir/logs pids=$dir/pids
node=$dir/node
NODE_NAME=agentid-node
BRIDGE=agentidbr0
POD_CIDR=10.222.0.0/24 POD_GW=10.222.0.1
# The node's (and the apiserver's) address is the pods' gateway on the bridge: the bridge plugin
# accepts a bridge only when its IPv4 address is the gateway, and pods reach it without a route.
NODE_IP=$POD_GW
SVC_CIDR=10.223.0.0/24 KUBE_SVC_IP=10.223.0.1
CTR_SOCK=$node/containerd/containerd.sock
# The kubelet's eviction floor for free disk (nodefs and imagefs), a Kubernetes quantity or a percentage.
DISK_FLOOR=${AGENTID_NODE_DISK_FLOOR:-256Mi}
# Free disk `up` asks for (MiB): the floor plus room for images, pod sandboxes, logs and etcd's growth
# while the tests run (a full `make test` took about 650 MiB of the disk after the node started). `make test`
# builds everything before the node starts, so this is what is left.
DISK_NEED_MIB=${AGENTID_NODE_DISK_NEED_MIB:-1536}
# Paths outside our directories that containerd, the kubelet, CNI or iptables create; `down` removes
# the ones that did not exist before `up`.
HOST_PATHS=(/run/containerd /var/run/netns /run/netns /var/lib/cni /var/log/pods /var/log/containers
  /etc/cni /opt/cni /opt/containerd /var/lib/kubelet /var/lib/containerd /etc/kubernetes
  /usr/libexec/kubernetes /run/xtables.lock /var/lib/kube-proxy)

# Kernel counters that change on their own; neither compared nor restored.
VOLATILE_SYSCTL='^(kernel\.random\.|kernel\.ns_last_pid|kernel\.pty\.nr|kernel\.tainted|fs\.(dentry-state|inode-nr|inode-state|file-nr|aio-nr|quota)|net\.netfilter\.nf_conntrack_count|net\.ipv4\.tcp_fastopen_key|vm\.(nr_|stat)|kernel\.sched_|dev\.|net\.ipv6\.conf\..*\.stable_secret)'

log() { printf '[node] %s\n' "$*" >&2; }
alive() { [ -f "$pids/$1" ] && kill -0 "$(cat "$pids/$1")" 2>/dev/null; }
kc() { "$bin/kubectl" --kubeconfig "$dir/kubeconfig" "$@"; }
ctr_() { ctr --address "$CTR_SOCK" -n k8s.io "$@"; }
now_ms() { date +%s%3N; }

# ---------------------------------------------------------------------------------------------
# The host state `down` must restore. Volatile kernel counters are left out.
snapshot() (
  # A subshell without -e/pipefail: an empty section (grep finding nothing) is no failure.
  set +e +o pipefail
  echo "## sysctl"
  sysctl -a 2>/dev/null | grep -Ev "$VOLATILE_SYSCTL" | sort
  echo "## nft"
  nft list ruleset 2>/dev/null | sed -E 's/ counter packets [0-9]+ bytes [0-9]+//; s/ # handle [0-9]+//'
  if command -v iptables-legacy-save >/dev/null; then
    echo "## iptables-legacy"
    { iptables-legacy-save; ip6tables-legacy-save; } 2>/dev/null | grep -v '^#' | sed -E 's/\[[0-9]+:[0-9]+\]//'
  fi
  echo "## links"
  ip -o link show | sed -E 's/^[0-9]+: //; s/ qlen [0-9]+//' | awk '{print $1, $2}' | sort
  echo "## addresses"
  ip -o addr show | awk '{print $2, $3, $4}' | sort
  echo "## routes"
  ip route show table all | sort
  echo "## rules"
  ip rule show
  echo "## netns"
  ls -1 /var/run/netns /run/netns 2>/dev/null | sort -u || true
  echo "## mounts"
  awk '{print $5, $9}' /proc/self/mountinfo | sort
  echo "## cgroups"
  for h in /sys/fs/cgroup/*/; do
    find "$h" -mindepth 1 -maxdepth 1 -type d ! -name process_api 2>/dev/null
    find "$h" -mindepth 1 -type d -name 'kubepods*' 2>/dev/null
  done | sort -u
  echo "## paths"
  local p
  for p in "${HOST_PATHS[@]}"; do [ -e "$p" ] && echo "$p"; done
  echo "## processes"
  # Anything still running from the node's binaries or with our directories in its arguments.
  pids_matching "$node/|^$bin/(kubelet|kube-proxy|kube-controller-manager|kube-scheduler) " | cut -d' ' -f2- | sort
)

# "pid command" of every process whose command line matches the regex (this script excluded;
# done in bash so that no helper process carries the pattern in its own arguments).
pids_matching() {
  local re=$1 f pid cmd
  for f in /proc/[0-9]*/cmdline; do
    pid=${f#/proc/}; pid=${pid%/cmdline}
    [ "$pid" = $$ ] && continue
    cmd=$(tr '\0' ' ' 2>/dev/null < "$f") || continue
    [[ $cmd == *e2e/node.sh* ]] && continue
    [[ $cmd =~ $re ]] && printf '%s %s\n' "$pid" "${cmd:0:160}"
  done
  return 0
}

# ---------------------------------------------------------------------------------------------
gen_cert() { # name subject [san]   (client certificate when no SAN is given)
  local name=$1 subj=$2 san=${3:-}
  [ -f "$pki/$name.crt" ] && return
  (
    cd "$pki"
    if [ -n "$san" ]; then
      printf 'basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\nsubjectAltName=%s\n' "$san" > "$name.ext"
    else
      printf 'basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n' > "$name.ext"
    fi
    openssl req -newkey rsa:2048 -nodes -keyout "$name.key" -out "$name.csr" -subj "$subj" 2>/dev/null
    openssl x509 -req -in "$name.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -out "$name.crt" \
      -days 3650 -extfile "$name.ext" 2>/dev/null
    rm -f "$name.csr" "$name.ext" ca.srl
  )
}

gen_node_pki() {
  [ -f "$pki/ca.key" ] || { log "missing $pki/ca.key (e2e/cluster.sh generates it)"; exit 1; }
  # Serving certificates name the addresses: made anew when those change.
  if [ "$(cat "$pki/node-addresses" 2>/dev/null)" != "$NODE_IP $KUBE_SVC_IP" ]; then
    rm -f "$pki/node-apiserver.crt" "$pki/kubelet-serving.crt"
    echo "$NODE_IP $KUBE_SVC_IP" > "$pki/node-addresses"
  fi
  gen_cert node-apiserver "/CN=kube-apiserver" \
    "IP:127.0.0.1,IP:$NODE_IP,IP:$KUBE_SVC_IP,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
  # The apiserver's client certificate towards the kubelet (logs, exec, port-forward).
  gen_cert apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client"
  gen_cert kubelet-serving "/CN=$NODE_NAME" "IP:$NODE_IP,DNS:$NODE_NAME"
  gen_cert kubelet "/O=system:nodes/CN=system:node:$NODE_NAME"
  gen_cert kube-controller-manager "/CN=system:kube-controller-manager"
  gen_cert kube-scheduler "/CN=system:kube-scheduler"
  gen_cert kube-proxy "/CN=system:kube-proxy"
}

component_kubeconfig() { # name server
  cat > "$node/$1.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: agentid-local
  cluster: {server: "$2", certificate-authority: "$pki/ca.crt"}
users:
- name: $1
  user: {client-certificate: "$pki/$1.crt", client-key: "$pki/$1.key"}
contexts:
- name: default
  context: {cluster: agentid-local, user: $1}
current-context: default
EOF
}

# ---------------------------------------------------------------------------------------------
apiserver_args() {
  command -v containerd >/dev/null && command -v nft >/dev/null ||
    { log "node packages missing: run e2e/tools/node-packages.sh"; exit 1; }
  mkdir -p "$node" "$logs" "$pids"
  # The snapshot is taken once, before anything of ours exists; a failed run keeps it, so the
  # next `down` still restores to the state before the first `up`.
  if [ ! -f "$dir/host-before.txt" ]; then
    snapshot > "$dir/host-before.txt.tmp"
    nft list ruleset > "$dir/host-before.nft" 2>/dev/null || : > "$dir/host-before.nft"
    sysctl -a 2>/dev/null | sort > "$dir/host-before.sysctl"
    mv "$dir/host-before.txt.tmp" "$dir/host-before.txt"
  fi
  if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
    ip link add "$BRIDGE" type bridge
  fi
  ip addr replace "$POD_GW/${POD_CIDR#*/}" dev "$BRIDGE"
  ip link set "$BRIDGE" up
  gen_node_pki
  printf '%s\n' \
    --bind-address "$NODE_IP" --advertise-address "$NODE_IP" \
    --tls-cert-file "$pki/node-apiserver.crt" --tls-private-key-file "$pki/node-apiserver.key" \
    --authorization-mode Node \
    --enable-admission-plugins NodeRestriction \
    --endpoint-reconciler-type lease \
    --service-cluster-ip-range "$SVC_CIDR" \
    --kubelet-client-certificate "$pki/apiserver-kubelet-client.crt" \
    --kubelet-client-key "$pki/apiserver-kubelet-client.key" \
    --kubelet-certificate-authority "$pki/ca.crt" \
    --kubelet-preferred-address-types InternalIP
}

write_configs() {
  local server=$1
  mkdir -p "$node/containerd/root" "$node/containerd/state" "$node/cni/net.d" "$node/cni/ipam" \
    "$node/kubelet" "$node/pod-logs" "$node/volume-plugins"
  cat > "$node/containerd.toml" <<EOF
version = 2
root = "$node/containerd/root"
state = "$node/containerd/state"
# opt would create /opt/containerd; the other snapshotters are unused.
disabled_plugins = ["io.containerd.internal.v1.opt", "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.tracing.processor.v1.otlp"]
[grpc]
  address = "$CTR_SOCK"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$("$here/tools/image.sh" ref pause)"
  # This VM kind's init drops CAP_SYS_RESOURCE: runc cannot lower oom_score_adj.
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "$(command -v runc)"
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$node/cni/net.d"
    max_conf_num = 1
EOF
  # No ipMasq: nothing leaves the machine. The IPAM state lives in our directory.
  cat > "$node/cni/net.d/10-agentid.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "agentid-pods",
  "plugins": [
    {
      "type": "bridge", "bridge": "$BRIDGE", "isGateway": true, "isDefaultGateway": true,
      "ipMasq": false, "hairpinMode": true,
      "ipam": {"type": "host-local", "dataDir": "$node/cni/ipam",
               "ranges": [[{"subnet": "$POD_CIDR", "gateway": "$POD_GW"}]]}
    }
  ]
}
EOF
  cat > "$node/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: "$pki/ca.crt"}
authorization: {mode: Webhook}
tlsCertFile: "$pki/kubelet-serving.crt"
tlsPrivateKeyFile: "$pki/kubelet-serving.key"
containerRuntimeEndpoint: "unix://$CTR_SOCK"
# This VM kind: cgroup v1 hierarchies (failCgroupV1), no systemd (cgroupfs), swap check off.
failCgroupV1: false
cgroupDriver: cgroupfs
failSwapOn: false
podLogsDir: "$node/pod-logs"
volumePluginDir: "$node/volume-plugins"
clusterDomain: cluster.local
resolvConf: /etc/resolv.conf
serializeImagePulls: false
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
# Absolute floors, not percentages: this machine's disk is large and mostly someone else's, so 2 % of it
# (5 GiB) was more than a clean CI checkout leaves free after its builds, and the kubelet tainted the node
# with disk-pressure: every pod Pending. Below $DISK_FLOOR nothing would work anyway.
evictionHard: {memory.available: "100Mi", nodefs.available: "$DISK_FLOOR", imagefs.available: "$DISK_FLOOR"}
nodeStatusUpdateFrequency: 2s
syncFrequency: 10s
fileCheckFrequency: 60s
shutdownGracePeriod: 0s
EOF
  cat > "$node/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: "$node/kube-proxy.kubeconfig"}
hostnameOverride: $NODE_NAME
mode: iptables
clusterCIDR: $POD_CIDR
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
nodePortAddresses: ["$NODE_IP/32"]
iptables:
  # Service traffic is masqueraded, so pod -> Service -> pod on one bridge needs no br_netfilter.
  masqueradeAll: true
  localhostNodePorts: false
  syncPeriod: 30s
  minSyncPeriod: 0s
# 0: leave the host's conntrack limits and timeouts as they are.
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
EOF
  cat > "$node/kube-scheduler.yaml" <<EOF
apiVersion: kubescheduler.config.k8s.io/v1
kind: KubeSchedulerConfiguration
clientConnection: {kubeconfig: "$node/kube-scheduler.kubeconfig"}
leaderElection: {leaderElect: false}
EOF
  local c
  for c in kubelet kube-proxy kube-controller-manager kube-scheduler; do component_kubeconfig "$c" "$server"; done
}

start() { # name command...
  local name=$1; shift
  setsid "$@" >"$logs/$name.log" 2>&1 </dev/null &
  echo $! > "$pids/$name"
}

wait_until() { # what seconds command...
  local what=$1 secs=$2; shift 2
  local deadline=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    if [ $SECONDS -ge $deadline ]; then log "$what not ready after ${secs}s"; return 1; fi
    sleep 0.2
  done
}

# Whether this machine can run the node at all; prints why not. Packages that apt can install and
# binaries that e2e/tools/build.sh builds do not count as missing.
preflight() {
  [ "$(uname -s)" = Linux ] || { echo "not Linux"; return 1; }
  [ "$(id -u)" = 0 ] || { echo "not root (the kubelet, containerd and kube-proxy change host state)"; return 1; }
  [ -d /sys/fs/cgroup ] && [ -n "$(ls -A /sys/fs/cgroup 2>/dev/null)" ] || { echo "no cgroup filesystem"; return 1; }
  [ -w /proc/sys/net/ipv4/ip_forward ] || { echo "/proc/sys is read-only (no sysctls for kube-proxy)"; return 1; }
  command -v ip >/dev/null || { echo "no ip(8) to create the bridge"; return 1; }
  if ! "$here/tools/node-packages.sh" --check 2>/dev/null && ! command -v apt-get >/dev/null; then
    echo "node packages missing and no apt-get to install them"; return 1
  fi
  [ -c /dev/kmsg ] || [ -e /dev/kmsg ] || { echo "no /dev/kmsg (the kubelet's OOM watcher needs it)"; return 1; }
  echo "this machine can run the node"
}

# The node's pressure conditions that are True ("" when none). Its taints are not read: the
# not-ready taint outlives Ready=True by a moment, until the node lifecycle controller removes it.
node_pressure() {
  kc get node "$NODE_NAME" -o 'go-template={{range .status.conditions}}{{if and (ne .type "Ready") (eq .status "True")}}{{.type}} ({{.message}}) {{end}}{{end}}' 2>/dev/null
}

# What to read when pods do not run: the node's conditions and taints, free disk and memory against
# the kubelet's floors, pods that are not Running, recent warnings, the kubelet's last errors.
diagnose() (
  set +e +o pipefail
  echo "## node $NODE_NAME"
  kc get node "$NODE_NAME" -o 'go-template={{range .status.conditions}}  {{.type}}={{.status}} {{.reason}}: {{.message}}{{"\n"}}{{end}}{{range .spec.taints}}  taint {{.key}}={{.value}}:{{.effect}}{{"\n"}}{{end}}'
  echo "## free ($(grep -h '^evictionHard' "$node/kubelet.yaml" 2>/dev/null || echo "evictionHard: not written yet"))"
  df -h "$node" 2>/dev/null | sed 's/^/  /'
  free -m | sed 's/^/  /'
  echo "## pods not Running"
  kc get pods -A --field-selector 'status.phase!=Running' -o wide 2>/dev/null | head -n 20 | sed 's/^/  /'
  echo "## warning events"
  kc get events -A --field-selector type=Warning --sort-by=.lastTimestamp 2>/dev/null | tail -n 20 | sed 's/^/  /'
  echo "## kubelet: last errors"
  grep -E '^E[0-9]{4}|evict|pressure' "$logs/kubelet.log" 2>/dev/null | tail -n 15 | cut -c1-300 | sed 's/^/  /'
  echo "## containerd: last errors"
  grep -E 'level=error' "$logs/containerd.log" 2>/dev/null | tail -n 10 | cut -c1-300 | sed 's/^/  /'
)

node_ready() {
  [ "$(kc get node "$NODE_NAME" -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" = True ]
}

up() {
  local b
  for b in kubelet kube-proxy kube-controller-manager kube-scheduler kubectl; do
    [ -x "$bin/$b" ] || { log "missing $bin/$b: run e2e/tools/build.sh kube"; exit 1; }
  done
  [ -f "$dir/host-before.txt" ] || { log "run through AGENTID_NODE=1 e2e/cluster.sh up (apiserver-args first)"; exit 1; }
  if alive kubelet; then log "already running"; return; fi
  local server; server=$(awk '/server:/ {print $2; exit}' "$dir/kubeconfig")
  local t0; t0=$(now_ms)
  local free_mib; free_mib=$(df -Pm "$dir" | awk 'NR == 2 {print $4}')
  log "free disk for the node: ${free_mib} MiB (the kubelet evicts below $DISK_FLOOR)"
  if [ "${free_mib:-0}" -lt "$DISK_NEED_MIB" ]; then
    log "too little free disk on $(df -P "$dir" | awk 'NR == 2 {print $6}') for a node: ${free_mib} MiB, need $DISK_NEED_MIB MiB (AGENTID_NODE_DISK_NEED_MIB)"
    exit 1
  fi
  write_configs "$server"
  "$here/tools/image.sh" pause >/dev/null 2>&1 || "$here/tools/image.sh" pause
  "$here/tools/image.sh" testbox >/dev/null 2>&1 || "$here/tools/image.sh" testbox

  start containerd containerd --config "$node/containerd.toml"
  start kube-controller-manager "$bin/kube-controller-manager" \
    --kubeconfig "$node/kube-controller-manager.kubeconfig" \
    --secure-port 0 --leader-elect=false --use-service-account-credentials \
    --service-account-private-key-file "$pki/sa.key" --root-ca-file "$pki/ca.crt" \
    --cluster-name agentid-local --allocate-node-cidrs=false --profiling=false \
    --node-monitor-period 2s --concurrent-gc-syncs 20
  start kube-scheduler "$bin/kube-scheduler" --config "$node/kube-scheduler.yaml" --secure-port 0
  wait_until containerd 20 ctr --address "$CTR_SOCK" version
  "$here/tools/image.sh" load pause testbox --address "$CTR_SOCK"
  local t_kubelet; t_kubelet=$(now_ms)
  start kubelet "$bin/kubelet" --config "$node/kubelet.yaml" --kubeconfig "$node/kubelet.kubeconfig" \
    --root-dir "$node/kubelet" --hostname-override "$NODE_NAME" --node-ip "$NODE_IP"
  start kube-proxy "$bin/kube-proxy" --config "$node/kube-proxy.yaml"
  if ! wait_until kubelet 60 node_ready; then
    tail -n 30 "$logs/kubelet.log" >&2; exit 1
  fi
  local t_ready; t_ready=$(now_ms)
  # The kubelet reports pressure only after its eviction manager's first pass (10 s): a node under
  # pressure schedules nothing. Checked once here; the tests' timeouts print `diagnose` as well.
  local pressure; pressure=$(node_pressure)
  if [ -n "$pressure" ]; then
    log "node $NODE_NAME is under pressure: $pressure"
    diagnose >&2
    exit 1
  fi
  # ServiceAccount admission is on: pods need the namespace's `default` ServiceAccount.
  wait_until kube-controller-manager 60 kc get serviceaccount default -n default ||
    { tail -n 30 "$logs/kube-controller-manager.log" >&2; exit 1; }
  local t_sa; t_sa=$(now_ms)
  log "node $NODE_NAME Ready $(( (t_ready - t_kubelet) ))ms after the kubelet started, $(( (t_ready - t0) ))ms after up; default ServiceAccount after $(( (t_sa - t0) ))ms"
}

# ---------------------------------------------------------------------------------------------
# SIGTERM to all the named processes at once, SIGKILL to those still alive after 10 s.
stop_pids() { # name...
  local n pid live=()
  for n in "$@"; do
    [ -f "$pids/$n" ] || continue
    pid=$(cat "$pids/$n")
    if kill -0 "$pid" 2>/dev/null; then kill "$pid" 2>/dev/null || true; live+=("$n:$pid"); fi
    rm -f "$pids/$n"
  done
  local deadline=$((SECONDS + 10)) e
  for e in "${live[@]}"; do
    pid=${e#*:}
    while kill -0 "$pid" 2>/dev/null && [ $SECONDS -lt $deadline ]; do sleep 0.05; done
    if kill -0 "$pid" 2>/dev/null; then kill -9 "$pid" 2>/dev/null || true; log "killed ${e%%:*} (pid $pid)"; fi
  done
}

mounts_under() { # prefix
  awk -v p="$1" 'index($5, p) == 1 {print $5}' /proc/self/mountinfo | sort -r
}

new_netns() { # network namespaces that were not there before up
  local n
  for n in $(ls -1 /var/run/netns 2>/dev/null); do
    sed -n '/^## netns$/,/^## /p' "$dir/host-before.txt" | grep -qx "$n" || echo "/var/run/netns/$n"
  done
}

down() {
  [ -f "$dir/host-before.txt" ] || [ -d "$node" ] || return 0
  local t0 steps="" tstep; t0=$(now_ms); tstep=$t0
  step() { local t; t=$(now_ms); steps="$steps $1 $((t - tstep))ms,"; tstep=$t; }
  # 1. The kubelet tears the pods down while everything still runs: controllers first (so nothing
  #    is recreated), then every pod deleted through the API; the kubelet removes the object only
  #    after its containers stopped, its network was torn down and its volumes unmounted.
  stop_pids kube-controller-manager kube-scheduler
  if alive kubelet && kc get --raw /readyz >/dev/null 2>&1; then
    # Only the pods on this node have anything to tear down; pods never scheduled (tests create thousands
    # for admission alone) go with the control plane.
    if ! kc delete pods --all-namespaces --field-selector "spec.nodeName=$NODE_NAME" --grace-period=1 \
      --timeout=45s >/dev/null 2>&1; then
      log "pods not all gone after 45s; forcing"
    fi
  fi
  step pods
  stop_pids kube-proxy kubelet
  step kubelet
  # 2. Whatever the kubelet did not stop (it was dead, or timed out): stop it through containerd.
  if alive containerd; then
    local ids
    ids=$(ctr_ tasks ls -q 2>/dev/null || true)
    if [ -n "$ids" ]; then
      log "stopping $(echo "$ids" | wc -l) leftover tasks"
      for id in $ids; do ctr_ tasks kill -s SIGKILL "$id" >/dev/null 2>&1 || true; done
      sleep 0.5
      for id in $ids; do ctr_ tasks delete -f "$id" >/dev/null 2>&1 || true; done
    fi
  fi
  stop_pids containerd
  step containerd
  # Shims that outlived containerd (they carry our socket address in their arguments).
  local pid
  for pid in $(pids_matching "$CTR_SOCK" | cut -d' ' -f1); do
    kill -9 "$pid" 2>/dev/null && log "killed leftover shim pid $pid" || true
  done
  # 3. Mounts: network namespaces containerd left, then anything under our directories.
  local m
  for m in $(new_netns); do umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true; rm -f "$m"; done
  for m in $(mounts_under "$node/"); do umount "$m" 2>/dev/null || umount -l "$m" || true; done
  # 4. Cgroups the kubelet and runc made (cgroupfs driver): depth first, every hierarchy.
  local d
  for d in $(find /sys/fs/cgroup -mindepth 2 -type d -name 'kubepods*' 2>/dev/null | awk '{print length, $0}' | sort -rn | cut -d' ' -f2-); do
    find "$d" -depth -type d -exec rmdir {} \; 2>/dev/null || true
  done
  # 5. The network: links, nftables ruleset, conntrack entries of our ranges.
  ip link show "$BRIDGE" >/dev/null 2>&1 && ip link del "$BRIDGE"
  if [ -f "$dir/host-before.nft" ]; then
    nft flush ruleset
    [ -s "$dir/host-before.nft" ] && nft -f "$dir/host-before.nft"
  fi
  conntrack -D -s "$POD_CIDR" >/dev/null 2>&1 || true
  conntrack -D -d "$SVC_CIDR" >/dev/null 2>&1 || true
  # 6. sysctls (the kubelet sets vm.overcommit_memory, kernel.panic*, ...; the bridge plugin ip_forward).
  if [ -f "$dir/host-before.sysctl" ]; then
    local key val
    sysctl -a 2>/dev/null | sort | comm -13 "$dir/host-before.sysctl" - | grep -Ev "$VOLATILE_SYSCTL" |
      while IFS= read -r line; do
        key=${line%% = *}
        val=$(awk -v k="$key" 'index($0, k " = ") == 1 { print substr($0, length(k) + 4); exit }' "$dir/host-before.sysctl")
        [ -n "$val" ] || continue # a key that did not exist before (an interface that is gone now)
        sysctl -q -w "$key=$val" >/dev/null 2>&1 || log "cannot restore $key"
      done || true # grep finding nothing changed is the usual case
  fi
  # 7. Paths outside our directories that did not exist before.
  local p
  if [ -f "$dir/host-before.txt" ]; then
    for p in "${HOST_PATHS[@]}"; do
      [ -e "$p" ] || continue
      sed -n '/^## paths$/,/^## /p' "$dir/host-before.txt" | grep -qx "$p" && continue
      if [ -d "$p" ] && [ -n "$(mounts_under "$p/")" ]; then log "not removing $p: mounts below it"; continue; fi
      rm -rf "$p"
    done
  fi
  rm -rf "$node"
  step host
  [ -f "$dir/host-before.txt" ] || return 0
  # 8. Compare.
  snapshot > "$dir/host-after.txt"
  if ! diff -u "$dir/host-before.txt" "$dir/host-after.txt" > "$dir/host-diff.txt"; then
    log "the host differs from before up ($(grep -c '^[-+][^-+]' "$dir/host-diff.txt") lines, $dir/host-diff.txt):"
    head -n 40 "$dir/host-diff.txt" >&2
    return 1
  fi
  mv "$dir/host-before.txt" "$dir/host-before.last.txt"
  rm -f "$dir/host-before.nft" "$dir/host-before.sysctl" "$dir/host-diff.txt"
  steps=${steps%,}
  log "down in $(( $(now_ms) - t0 ))ms (${steps# }); host restored (snapshot identical)"
}

status() {
  local c ok=0
  for c in containerd kube-controller-manager kube-scheduler kubelet kube-proxy; do
    if alive "$c"; then echo "$c: running (pid $(cat "$pids/$c"))"; else echo "$c: not running"; ok=1; fi
  done
  return $ok
}

# Loads images (e2e/tools/image.sh names) into the running node's containerd.
load_images() {
  alive containerd || { log "no node running in $dir (AGENTID_NODE=1 e2e/cluster.sh up)"; exit 1; }
  local n
  for n in "$@"; do
    "$here/tools/image.sh" "$n"
    "$here/tools/image.sh" load "$n" --address "$CTR_SOCK"
    log "loaded $("$here/tools/image.sh" ref "$n")"
  done
}

case "${1:-}" in
  apiserver-args) apiserver_args ;;
  load) shift; load_images "$@" ;;
  preflight) preflight ;;
  tag) alive containerd || { log "no node running in $dir"; exit 1; }; ctr_ images tag --force "$2" "$3" >/dev/null ;;
  api-host) echo "$NODE_IP" ;;
  up) up ;;
  down) down ;;
  snapshot) snapshot ;;
  status) status ;;
  diagnose) diagnose ;;
  *) echo "usage: $0 preflight|apiserver-args|api-host|up|down|snapshot|load NAME...|tag SRC DST|status|diagnose" >&2; exit 2 ;;
esac
