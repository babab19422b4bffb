#!/usr/bin/env bash
# Installs the Debian packages the local node (e2e/node.sh) and the registry-less images
# (e2e/tools/image.sh) need, when any is missing. Quiet and instant when all are present.
#
#   e2e/tools/node-packages.sh [--check]     --check: only report, exit 1 when something is missing
#
# containerd 1.6 (CRI v1) and runc 1.1 are Debian 12's; crun does not work on this VM kind
# (hybrid cgroups), so it is not used. busybox-static and gcc make the tiny test images.
set -euo pipefail

PKGS=(
  containerd                  # the container runtime, started by e2e/node.sh with its own dirs
  runc                        # the OCI runtime containerd calls
  containernetworking-plugins # bridge, host-local, portmap, loopback in /usr/lib/cni
  iptables                    # kube-proxy (iptables mode), the kubelet, the CNI portmap/masquerade
  conntrack                   # kube-proxy clears stale UDP entries with it
  nftables                    # `nft`: e2e/node.sh snapshots and restores the host's ruleset with it
  ethtool                     # the kubelet and kube-proxy probe interfaces with it (optional upstream)
  umoci                       # builds OCI image layouts without a daemon
  skopeo                      # OCI layout -> docker-archive tar for `ctr images import`
  busybox-static              # the shell and tools inside the tiny test images
  gcc                         # the static pause and test client binaries
  libc6-dev                   # headers for them
  ca-certificates             # copied into the agentid image
)

missing=()
for p in "${PKGS[@]}"; do
  st=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
  [[ $st == "install ok installed" ]] || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "${1:-}" = --check ]; then
  echo "[node-packages] missing: ${missing[*]}" >&2
  exit 1
fi
echo "[node-packages] installing: ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
# The package lists may be absent (fresh machine) or stale; one update is enough.
apt-get update -qq >/dev/null
# apt never starts services here (no systemd); --no-install-recommends keeps docker.io etc. out.
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "[node-packages] done" >&2
