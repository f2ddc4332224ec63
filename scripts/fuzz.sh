#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for a bounded time, starting from its
# committed corpus (fuzz/corpus/<target>/), and fails on the first crash, panic,
# timeout or out-of-memory, printing the input that caused it.
#
#   scripts/fuzz.sh                     # every target, 30 s each
#   FUZZ_SECONDS=300 scripts/fuzz.sh    # longer
#   scripts/fuzz.sh manifest reference  # some targets only
#
# The corpus is copied to a scratch directory first, so what libFuzzer adds while it
# runs never changes the committed seeds; crashing inputs are kept under
# fuzz/artifacts/<target>/ (ignored by git). To keep a crash as a regression seed,
# copy it into fuzz/corpus/<target>/: `cargo test` runs every seed (src/fuzzing.rs).
#
# Toolchain: cargo-fuzz builds with nightly-only flags (-Zsanitizer=address and the
# sancov passes libFuzzer needs), and only the pinned stable toolchain is installed
# here. RUSTC_BOOTSTRAP=1 lets that stable compiler accept them. The standard library
# stays uninstrumented (no --build-std: it needs the rust-src component and nightly
# cargo), which costs coverage inside std only; AddressSanitizer still checks our
# code and every dependency, whose panics are what this looks for.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

CARGO_FUZZ_VERSION=0.13.2
FUZZ_SECONDS="${FUZZ_SECONDS:-30}"
ALL_TARGETS=(reference manifest config_toml hosts_toml www_authenticate content_range layer)
if (($# > 0)); then
    TARGETS=("$@")
else
    TARGETS=("${ALL_TARGETS[@]}")
fi
if ! [[ $FUZZ_SECONDS =~ ^[1-9][0-9]*$ ]]; then
    echo "fuzz.sh: FUZZ_SECONDS must be a positive number of seconds, not '$FUZZ_SECONDS'" >&2
    exit 2
fi
for target in "${TARGETS[@]}"; do
    if [[ ! -f fuzz/fuzz_targets/$target.rs ]]; then
        echo "fuzz.sh: no fuzz target '$target' (known: ${ALL_TARGETS[*]})" >&2
        exit 2
    fi
done

# cargo-fuzz itself, pinned; installed once.
if [[ $(cargo fuzz --version 2>/dev/null) != "cargo-fuzz $CARGO_FUZZ_VERSION" ]]; then
    echo "fuzz.sh: installing cargo-fuzz $CARGO_FUZZ_VERSION"
    cargo install --locked --force --version "$CARGO_FUZZ_VERSION" cargo-fuzz
fi

export RUSTC_BOOTSTRAP=1
# The fuzz crate is not part of the main workspace: its own target dir, so fuzz
# builds (instrumented) never invalidate the main build.
if [[ -z ${FUZZ_TARGET_DIR:-} ]]; then
    if [[ -n ${CARGO_TARGET_DIR:-} ]]; then
        FUZZ_TARGET_DIR="$CARGO_TARGET_DIR-fuzz"
    else
        FUZZ_TARGET_DIR="$PWD/fuzz/target"
    fi
fi
FUZZ_FLAGS=(--release --debug-assertions --target-dir "$FUZZ_TARGET_DIR")

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

echo "fuzz.sh: building ${#TARGETS[@]} target(s)"
(cd fuzz && cargo fuzz build "${FUZZ_FLAGS[@]}")

failed=()
for target in "${TARGETS[@]}"; do
    corpus="$scratch/$target"
    artifacts="fuzz/artifacts/$target"
    mkdir -p "$corpus" "$artifacts"
    cp fuzz/corpus/"$target"/* "$corpus"/
    echo
    echo "==> fuzz target $target for ${FUZZ_SECONDS}s ($(find "$corpus" -type f | wc -l) seeds)"
    before=$(find "$artifacts" -type f | sort)
    # -timeout: one input taking longer is a hang; -rss_limit_mb: runaway memory.
    if (cd fuzz && cargo fuzz run "${FUZZ_FLAGS[@]}" "$target" "$corpus" -- \
        -max_total_time="$FUZZ_SECONDS" -timeout=10 -rss_limit_mb=2048 \
        -artifact_prefix="$PWD/artifacts/$target/" -print_final_stats=1); then
        echo "fuzz.sh: $target: no crash in ${FUZZ_SECONDS}s"
    else
        failed+=("$target")
        echo "fuzz.sh: $target FAILED; crashing input(s):" >&2
        comm -13 <(echo "$before") <(find "$artifacts" -type f | sort) | sed 's/^/  /' >&2
    fi
done

echo
if ((${#failed[@]} > 0)); then
    echo "fuzz.sh: FAILED: ${failed[*]} (inputs under fuzz/artifacts/)" >&2
    exit 1
fi
echo "fuzz.sh: ${#TARGETS[@]} target(s) ran ${FUZZ_SECONDS}s each without a crash"
