#!/usr/bin/env bash
# OCI images without a registry or a container engine: a root filesystem staged in a directory
# (mtimes 0, owners fixed), one layer with `umoci insert`, the config set with `umoci config`
# (created 1970-01-01, no history), then `skopeo copy` to a docker-archive tar that
# `ctr -n k8s.io images import` loads. Same inputs -> same manifest digest (printed).
#
#   e2e/tools/image.sh pause     the pod sandbox: e2e/images/pause.c, static   -> agentid.local/pause:1
#   e2e/tools/image.sh testbox   busybox-static + sh/nc/httpd links, for tests -> agentid.local/testbox:1
#   e2e/tools/image.sh agentid   target/release/agentid, uid 65532, no shell, CA certificates, only the
#                                libraries `ldd` lists (the Dockerfile makes the same layout)
#                                -> agentid.local/agentid:<Cargo version>
#   e2e/tools/image.sh sample-agent   target/release/examples/sample-agent, the same layout
#                                -> agentid.local/sample-agent:<Cargo version>
#   e2e/tools/image.sh load NAME... [--address SOCK]   import the tars into containerd (namespace k8s.io)
#   e2e/tools/image.sh ref NAME   print the image reference
#
# Output: $AGENTID_IMAGE_DIR (default <repo>/.cache/images)/<name>.tar (+ <name>.digest). An image whose
# inputs did not change is not rebuilt.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
out=${AGENTID_IMAGE_DIR:-$root/.cache/images}
mkdir -p "$out"
log() { printf '[image] %s\n' "$*" >&2; }
EPOCH=1970-01-01T00:00:00Z

agentid_version() { sed -n 's/^version = "\(.*\)"$/\1/p' "$root/Cargo.toml" | head -1; }

ref() {
  case $1 in
    pause) echo agentid.local/pause:1 ;;
    testbox) echo agentid.local/testbox:1 ;;
    agentid) echo "agentid.local/agentid:$(agentid_version)" ;;
    sample-agent) echo "agentid.local/sample-agent:$(agentid_version)" ;;
    *) log "unknown image $1"; exit 2 ;;
  esac
}

# Turns the staged root filesystem $1 into $out/$2.tar tagged $3, with config args "${@:4}".
pack() {
  local rootfs=$1 name=$2 image_ref=$3; shift 3
  local work="$out/$name.build"
  rm -rf "$work"
  mkdir -p "$work"
  # Nothing of the build machine leaks in: fixed times, owners root unless staged otherwise.
  find "$rootfs" -exec touch -h -d "@0" {} +
  umoci init --layout "$work/oci"
  umoci new --image "$work/oci:img"
  umoci insert --history.created "$EPOCH" --history.created_by "e2e/tools/image.sh $name" \
    --image "$work/oci:img" "$rootfs" /
  umoci config --no-history --image "$work/oci:img" --created "$EPOCH" --author agentid \
    --architecture amd64 --os linux --config.workingdir / "$@"
  umoci gc --layout "$work/oci"
  local tar="$out/$name.tar"
  rm -f "$tar.tmp"
  skopeo copy --quiet "oci:$work/oci:img" "docker-archive:$tar.tmp:$image_ref" >/dev/null
  mv "$tar.tmp" "$tar"
  local digest
  digest=$(skopeo inspect --raw "oci:$work/oci:img" | sha256sum | cut -d' ' -f1)
  echo "sha256:$digest" > "$out/$name.digest"
  rm -rf "$work"
  log "$image_ref -> $tar (manifest sha256:$digest)"
}

# Skips the build when the hash of the inputs (files and this script) is unchanged.
fresh() { # name input-files...
  local name=$1; shift
  local sum
  sum=$(cat "$0" "$@" | sha256sum | cut -d' ' -f1)
  if [ -f "$out/$name.tar" ] && [ "$(cat "$out/$name.inputs" 2>/dev/null)" = "$sum" ]; then
    log "$(ref "$name") up to date ($(cat "$out/$name.digest"))"; return 0
  fi
  echo "$sum" > "$out/$name.inputs.new"
  return 1
}
done_inputs() { mv "$out/$1.inputs.new" "$out/$1.inputs"; }

build_pause() {
  local src="$root/e2e/images/pause.c"
  fresh pause "$src" && return
  local fs; fs=$(mktemp -d); chmod 0755 "$fs"
  gcc -static -Os -s -Wall -Wextra -o "$fs/pause" "$src"
  chmod 0755 "$fs/pause"
  pack "$fs" pause "$(ref pause)" --config.user 65535:65535 --config.entrypoint /pause
  rm -rf "$fs"; done_inputs pause
}

build_testbox() {
  local bb=/bin/busybox
  [ -x "$bb" ] || { log "busybox-static missing (e2e/tools/node-packages.sh)"; exit 1; }
  ldd "$bb" >/dev/null 2>&1 && { log "$bb is not static (install busybox-static)"; exit 1; }
  fresh testbox "$bb" && return
  local fs; fs=$(mktemp -d); chmod 0755 "$fs"
  mkdir -p "$fs/bin" "$fs/tmp" "$fs/etc"
  cp "$bb" "$fs/bin/busybox"
  local a
  for a in sh cat echo env hostname httpd id ls nc printf sleep test true false wc head grep; do
    ln -s busybox "$fs/bin/$a"
  done
  printf 'root:x:0:0:root:/:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' > "$fs/etc/passwd"
  printf 'root:x:0:\nnobody:x:65534:\n' > "$fs/etc/group"
  chmod 1777 "$fs/tmp"
  pack "$fs" testbox "$(ref testbox)" --config.user 65534:65534 --config.env PATH=/bin --config.cmd /bin/sh
  rm -rf "$fs"; done_inputs testbox
}

# A glibc-dynamic Rust binary on its own: the loader and the libraries at the paths `ldd` names, CA
# certificates, passwd/group naming uid 65532 (no shell exists). name exe path-in-image
build_rust() {
  local name=$1 exe=$2 dest=$3
  fresh "$name" "$exe" && return
  local fs; fs=$(mktemp -d); chmod 0755 "$fs"
  mkdir -p "$fs$(dirname "$dest")" "$fs/etc/ssl/certs" "$fs/tmp"
  objcopy --strip-all "$exe" "$fs$dest"
  local lib
  for lib in $(ldd "$exe" | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}'); do
    mkdir -p "$fs$(dirname "$lib")"
    cp -L "$lib" "$fs$lib"
  done
  cp -L /etc/ssl/certs/ca-certificates.crt "$fs/etc/ssl/certs/ca-certificates.crt"
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' > "$fs/etc/passwd"
  printf 'root:x:0:\nnonroot:x:65532:\n' > "$fs/etc/group"
  chmod 1777 "$fs/tmp"
  chmod -R go-w "$fs/usr" "$fs/etc"
  pack "$fs" "$name" "$(ref "$name")" --config.user 65532:65532 --config.entrypoint "$dest" \
    --config.env SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
  rm -rf "$fs"; done_inputs "$name"
}

# The same layout as the Dockerfile: /usr/local/bin/agentid.
build_agentid() {
  local exe="$root/target/release/agentid"
  [ -x "$exe" ] || { log "missing $exe: cargo build --release --locked (make build)"; exit 1; }
  build_rust agentid "$exe" /usr/local/bin/agentid
}

# examples/sample-agent.rs: fetches its task token and asks the decision point before calling its tool.
build_sample_agent() {
  local exe="$root/target/release/examples/sample-agent"
  [ -x "$exe" ] || { log "missing $exe: cargo build --release --locked --example sample-agent"; exit 1; }
  build_rust sample-agent "$exe" /usr/local/bin/sample-agent
}

load() { # names... [--address SOCK]
  local addr=${CONTAINERD_ADDRESS:-} names=()
  while [ $# -gt 0 ]; do
    case $1 in --address) addr=$2; shift 2 ;; *) names+=("$1"); shift ;; esac
  done
  [ -n "$addr" ] || { log "load needs --address or CONTAINERD_ADDRESS"; exit 2; }
  local n
  for n in "${names[@]}"; do
    [ -f "$out/$n.tar" ] || "$0" "$n"
    ctr --address "$addr" -n k8s.io images import "$out/$n.tar" >/dev/null
  done
}

case "${1:-}" in
  pause) build_pause ;;
  testbox) build_testbox ;;
  agentid) build_agentid ;;
  sample-agent) build_sample_agent ;;
  all) build_pause; build_testbox; build_agentid; build_sample_agent ;;
  load) shift; load "$@" ;;
  ref) ref "$2" ;;
  *) echo "usage: $0 pause|testbox|agentid|sample-agent|all|load NAME...|ref NAME" >&2; exit 2 ;;
esac
