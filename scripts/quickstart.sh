#!/usr/bin/env bash
# ctrpull in five minutes: build it, push a busybox image to a registry, pull it into
# containerd with ctrpull, and run it with ctr.
#
# Usage: scripts/quickstart.sh [--address SOCK] [--registry HOST:PORT]
#
#   --address SOCK        use this containerd instead of starting a scratch one
#   --registry HOST:PORT  use this plain-HTTP registry instead of starting a scratch one
#
# Without them it starts containerd 1.6 and docker-registry on loopback in a temp dir
# (configured like the integration tests' harness) and removes everything on exit.
# Needs root (it installs packages and runs containerd).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

ADDRESS=""
REGISTRY=""
NAMESPACE=quickstart
REPOSITORY=test/busybox
TAG=latest

usage() { sed -n '2,12s/^# \{0,1\}//p' "$0"; }
say() { printf '\n==> %s\n' "$*"; }
die() {
    printf 'quickstart: error: %s\n' "$*" >&2
    exit 1
}

while (($# > 0)); do
    case "$1" in
        --address) ADDRESS="${2:?--address needs a socket path}"; shift 2 ;;
        --address=*) ADDRESS="${1#*=}"; shift ;;
        --registry) REGISTRY="${2:?--registry needs HOST:PORT}"; shift 2 ;;
        --registry=*) REGISTRY="${1#*=}"; shift ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
done

WORK=""
CONTAINERD_PID=""
REGISTRY_PID=""

# Stops a daemon we started: SIGTERM, up to 10 s, then SIGKILL.
stop_pid() {
    local pid="$1" i
    kill -TERM "$pid" 2>/dev/null || return 0
    for ((i = 0; i < 50; i++)); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.2
    done
    kill -KILL "$pid" 2>/dev/null || true
}

teardown() {
    local rc=$?
    if [[ -n $WORK ]]; then
        say "tearing down what the quickstart started"
        remove_scratch
    fi
    if ((rc == 0)); then
        echo "quickstart: done"
    else
        echo "quickstart: failed (exit $rc)" >&2
    fi
    exit "$rc"
}

remove_scratch() {
    local file pid args i mounts
    [[ -z $CONTAINERD_PID ]] || stop_pid "$CONTAINERD_PID"
    [[ -z $REGISTRY_PID ]] || stop_pid "$REGISTRY_PID"
    # Shims outlive containerd by design; ours are the ones serving our socket.
    for file in /proc/[0-9]*/cmdline; do
        mapfile -d '' -t args 2>/dev/null <"$file" || continue
        [[ ${args[0]:-} == *containerd-shim* ]] || continue
        for ((i = 1; i + 1 < ${#args[@]}; i++)); do
            if [[ ${args[i]} == -address && ${args[i + 1]} == "$WORK"/* ]]; then
                pid=${file#/proc/}
                kill -KILL "${pid%/cmdline}" 2>/dev/null || true
            fi
        done
    done
    # containerd leaves overlay mounts under its root: unmount them before rm -rf.
    mounts=$(awk -v dir="$WORK/" 'index($5, dir) == 1 { print $5 }' /proc/self/mountinfo | sort -r)
    if [[ -n $mounts ]]; then
        while IFS= read -r m; do
            umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
        done <<<"$mounts"
    fi
    rm -rf --one-file-system "$WORK"
}
trap teardown EXIT
trap 'exit 130' INT TERM

# Prints a TCP port on 127.0.0.1 that nothing listens on.
free_port() {
    local port
    for _ in $(seq 1 50); do
        port=$((20000 + RANDOM % 20000))
        if ! ss -Hltn "sport = :$port" | grep -q .; then
            echo "$port"
            return 0
        fi
    done
    die "no free TCP port found on 127.0.0.1"
}

# GET /v2/ with bash's /dev/tcp (no curl needed); prints the status line.
registry_status() {
    local host="${1%:*}" port="${1##*:}" line
    exec 3<>"/dev/tcp/$host/$port" || return 1
    printf 'GET /v2/ HTTP/1.0\r\nHost: %s\r\n\r\n' "$1" >&3
    IFS= read -r -t 2 line <&3 || true
    exec 3<&-
    echo "$line"
}

[[ $(id -u) -eq 0 ]] || die "run me as root: I install packages and start containerd"

say "installing what is missing (scripts/deps.sh)"
bash scripts/deps.sh

say "building ctrpull (cargo build --release)"
cargo build --release
CTRPULL="$PWD/target/release/ctrpull"

if [[ -z $ADDRESS || -z $REGISTRY ]]; then
    WORK=$(mktemp -d /tmp/ctrpull-quickstart.XXXXXX)
fi

if [[ -z $REGISTRY ]]; then
    say "starting a scratch docker-registry"
    port=$(free_port)
    REGISTRY="127.0.0.1:$port"
    mkdir -p "$WORK/registry"
    cat >"$WORK/registry/config.yml" <<EOF
version: 0.1
log:
  level: info
  formatter: text
storage:
  filesystem:
    rootdirectory: $WORK/registry/data
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: $REGISTRY
  secret: quickstart-$RANDOM$RANDOM
EOF
    /usr/bin/docker-registry serve "$WORK/registry/config.yml" >"$WORK/registry/registry.log" 2>&1 &
    REGISTRY_PID=$!
    for ((i = 0; i < 100; i++)); do
        [[ $(registry_status "$REGISTRY" 2>/dev/null) == *" 200"* ]] && break
        kill -0 "$REGISTRY_PID" 2>/dev/null || { tail -n 20 "$WORK/registry/registry.log" >&2; die "docker-registry exited"; }
        sleep 0.2
    done
    [[ $(registry_status "$REGISTRY" 2>/dev/null) == *" 200"* ]] ||
        { tail -n 20 "$WORK/registry/registry.log" >&2; die "docker-registry did not answer GET /v2/ on $REGISTRY"; }
    echo "registry: http://$REGISTRY (pid $REGISTRY_PID, log $WORK/registry/registry.log)"
fi

if [[ -z $ADDRESS ]]; then
    say "starting a scratch containerd 1.6"
    c="$WORK/containerd"
    mkdir -p "$c/certs.d" "$c/cni/bin" "$c/cni/net.d" "$c/opt"
    ADDRESS="$c/containerd.sock"
    cat >"$c/config.toml" <<EOF
version = 2
root = "$c/root"
state = "$c/state"
disabled_plugins = [
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
]

[grpc]
  address = "$ADDRESS"

[ttrpc]
  address = "$ADDRESS.ttrpc"

[debug]
  address = ""
  level = "info"

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "$c/opt"

[plugins."io.containerd.nri.v1.nri"]
  disable = true

[plugins."io.containerd.grpc.v1.cri"]
  disable_tcp_service = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false

  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"

  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "$c/cni/bin"
    conf_dir = "$c/cni/net.d"

  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "$c/certs.d"
EOF
    /usr/bin/containerd --config "$c/config.toml" >"$c/containerd.log" 2>&1 &
    CONTAINERD_PID=$!
    for ((i = 0; i < 150; i++)); do
        ctr --address "$ADDRESS" --connect-timeout 2s version >/dev/null 2>&1 && break
        kill -0 "$CONTAINERD_PID" 2>/dev/null || { tail -n 20 "$c/containerd.log" >&2; die "containerd exited"; }
        sleep 0.2
    done
    ctr --address "$ADDRESS" --connect-timeout 2s version >/dev/null 2>&1 ||
        { tail -n 20 "$c/containerd.log" >&2; die "containerd did not answer on $ADDRESS"; }
    echo "containerd: $ADDRESS (pid $CONTAINERD_PID, log $c/containerd.log)"
fi

IMAGE="$REGISTRY/$REPOSITORY:$TAG"

say "pushing a busybox image to http://$REGISTRY ($REPOSITORY:$TAG)"
"$CTRPULL" sample-image --registry "http://$REGISTRY" --repository "$REPOSITORY" --tag "$TAG"

say "pulling $IMAGE into containerd (namespace $NAMESPACE) with ctrpull"
"$CTRPULL" pull --address "$ADDRESS" --namespace "$NAMESPACE" --plain-http "$IMAGE"

say "running it with ctr"
out=$(ctr --address "$ADDRESS" -n "$NAMESPACE" run --rm "$IMAGE" "quickstart-$RANDOM$RANDOM" /bin/busybox echo ok)
echo "$out"
[[ $out == ok ]] || die "expected the container to print 'ok', got: $out"

say "images in namespace $NAMESPACE"
ctr --address "$ADDRESS" -n "$NAMESPACE" images ls
