#!/usr/bin/env bash
# Everything CI checks, in order, stopping at the first failure:
#   deps (scripts/deps.sh) → fmt → clippy → doc → Kubernetes manifests
#   (scripts/validate-manifests.sh) → cargo test --all-targets → fuzz
#   (scripts/fuzz.sh: every fuzz target for FUZZ_SECONDS, 30 s by default).
# The integration tests start their own containerd and registry and need root.
# Afterwards it kills any daemon the tests left behind (PID files under
# $CTRPULL_TEST_RUN_DIR/pids) and removes what they left in the run dir.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

# A run dir of our own, so the cleanup below never touches another run's daemons.
RUN_DIR="${CTRPULL_TEST_RUN_DIR:-/tmp/ctrpull-test/run-$$}"
export CTRPULL_TEST_RUN_DIR="$RUN_DIR"

CURRENT_STEP="setup"
step() {
    CURRENT_STEP="$1"
    printf '\n==> %s\n' "$*"
}
fail() {
    printf '\ntest.sh: %s failed\n' "$1" >&2
    exit 1
}

# Kills daemons named by the harness's PID files, and containerd shims whose
# -address lies under the run dir (shims have no PID file: containerd starts them)
# with the containers they run.
# A PID is only signalled if its command line still mentions the run dir, so a
# recycled PID is never hit.
kill_leftovers() {
    local file pid ppid stat shim arg i args pids=() shims=() deadline alive
    shopt -s nullglob
    for file in "$RUN_DIR"/pids/*.pid; do
        pid=$(<"$file")
        rm -f "$file"
        [[ $pid =~ ^[0-9]+$ ]] || continue
        mapfile -d '' -t args 2>/dev/null <"/proc/$pid/cmdline" || continue
        for arg in "${args[@]}"; do
            if [[ $arg == "$RUN_DIR"/* ]]; then
                pids+=("$pid")
                break
            fi
        done
    done
    for file in /proc/[0-9]*/cmdline; do
        pid=${file#/proc/}
        pid=${pid%/cmdline}
        mapfile -d '' -t args 2>/dev/null <"$file" || continue
        [[ ${args[0]:-} == *containerd-shim* ]] || continue
        for ((i = 1; i + 1 < ${#args[@]}; i++)); do
            if [[ ${args[i]} == -address && ${args[i + 1]} == "$RUN_DIR"/* ]]; then
                shims+=("$pid")
                break
            fi
        done
    done
    shopt -u nullglob
    # A shim's children are the containers it runs.
    if ((${#shims[@]} > 0)); then
        for file in /proc/[0-9]*/stat; do
            stat=$(cat 2>/dev/null <"$file") || continue
            read -r _ ppid _ <<<"${stat##*) }"
            for shim in "${shims[@]}"; do
                if [[ $ppid == "$shim" ]]; then
                    pid=${file#/proc/}
                    # PID 1 of its own PID namespace ignores SIGTERM: no grace.
                    echo "test.sh: killing leftover container process ${pid%/stat}"
                    kill -KILL "${pid%/stat}" 2>/dev/null || true
                fi
            done
        done
        pids+=("${shims[@]}")
    fi
    ((${#pids[@]} > 0)) || return 0
    echo "test.sh: stopping ${#pids[@]} leftover daemon(s): ${pids[*]}"
    kill -TERM "${pids[@]}" 2>/dev/null || true
    deadline=$((SECONDS + 10))
    while ((SECONDS < deadline)); do
        alive=0
        for pid in "${pids[@]}"; do
            kill -0 "$pid" 2>/dev/null && alive=1
        done
        ((alive)) || break
        sleep 0.2
    done
    kill -KILL "${pids[@]}" 2>/dev/null || true
}

# Unmounts anything below the run dir (containerd's overlay mounts) and removes
# the daemon directories the harness creates there.
clean_run_dir() {
    [[ -d $RUN_DIR ]] || return 0
    local mounts
    mounts=$(awk -v dir="$RUN_DIR/" 'index($5, dir) == 1 { print $5 }' /proc/self/mountinfo | sort -r)
    if [[ -n $mounts ]]; then
        echo "test.sh: unmounting leftovers under $RUN_DIR"
        while IFS= read -r m; do
            umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
        done <<<"$mounts"
    fi
    rm -rf --one-file-system "$RUN_DIR"/registry-* "$RUN_DIR"/containerd-*
    rmdir "$RUN_DIR/pids" "$RUN_DIR" 2>/dev/null || true
}

cleanup() {
    kill_leftovers
    clean_run_dir
}

start=$SECONDS
on_exit() {
    local rc=$?
    cleanup
    if ((rc == 0)); then
        printf '\ntest.sh: PASSED: deps, fmt, clippy, doc, manifests, tests, fuzz in %ds\n' "$((SECONDS - start))"
    else
        printf '\ntest.sh: FAILED at step "%s" (exit %d) after %ds\n' "$CURRENT_STEP" "$rc" "$((SECONDS - start))" >&2
    fi
}
trap on_exit EXIT

step "dependencies: scripts/deps.sh"
bash scripts/deps.sh || fail "scripts/deps.sh"

# Leftovers of an earlier, killed run with the same run dir would confuse this one.
cleanup

step "cargo fmt --all -- --check"
cargo fmt --all -- --check || fail "cargo fmt (run \`cargo fmt --all\`)"

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets -- -D warnings || fail "cargo clippy"

step "RUSTDOCFLAGS=-Dwarnings cargo doc --no-deps"
RUSTDOCFLAGS=-Dwarnings cargo doc --no-deps || fail "cargo doc"

step "Kubernetes manifests: scripts/validate-manifests.sh"
bash scripts/validate-manifests.sh || fail "scripts/validate-manifests.sh"

step "cargo test --all-targets"
if [[ $(id -u) -ne 0 ]]; then
    echo "test.sh: warning: not root; the integration tests need root to run containerd" >&2
fi
cargo test --all-targets || fail "cargo test"

step "scripts/fuzz.sh (each target ${FUZZ_SECONDS:-30}s from fuzz/corpus)"
bash scripts/fuzz.sh || fail "scripts/fuzz.sh"
