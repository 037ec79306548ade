#!/usr/bin/env bash
# The reliability suite (issue 7, RELIABILITY.md): runs every tool with a time limit and prints a
# summary: state-machine sequences and steps, loom scenarios and interleavings, failpoints fired,
# fuzz executions, sanitizer and Miri results, and failures.
#
# Needs the nightly toolchain with the miri and rust-src components
# (`rustup component add miri rust-src --toolchain nightly`); installs cargo-fuzz if it is missing.
# About 35 minutes on 2 cores (RELIABILITY.md has the last run's times). Knobs:
# SYNAPSWAP_MODEL_CASES (state-machine sequences, default 2000), PLACEMENT_CASES (random placement
# workloads, default 20000), KERNEL_ROUNDS (engine_kernels.rs repetitions, default 20), FUZZ_RUNS
# (executions per fuzz job, two jobs, default 500000), LOOM_MAX_PREEMPTIONS (default 2).
set -uo pipefail
cd "$(dirname "$0")/.."
CASES=${SYNAPSWAP_MODEL_CASES:-2000}
FUZZ_RUNS=${FUZZ_RUNS:-500000}
PREEMPTIONS=${LOOM_MAX_PREEMPTIONS:-2}
log=$(mktemp -d)
failures=0
failed=()
step() {
    local name=$1
    shift
    echo "== $name ($(date +%H:%M:%S))"
    if ! "$@" >"$log/$name.txt" 2>&1; then
        failures=$((failures + 1))
        failed+=("$name")
        echo "FAILED: $name (log: $log/$name.txt)"
        tail -15 "$log/$name.txt"
    fi
}

step state-machine env SYNAPSWAP_MODEL_CASES="$CASES" timeout 900 \
    cargo test --release -q -p synapswap --test model_state_machine -- --nocapture
step faults timeout 300 cargo test --release -q -p synapswap --test engine_faults -- --nocapture
# Consumer kernels on strict sim streams racing every release path, and links whose copies keep
# failing (sticky and transient) with prefetch on, repeated to vary the threads' timing.
kernels() {
    for i in $(seq 1 "${KERNEL_ROUNDS:-20}"); do
        timeout 120 cargo test --release -q -p synapswap --test engine_kernels || return 1
    done
}
step kernels kernels
# Joint step placement: random workloads at budgets from the largest step's footprint up; every
# one must run with no OutOfDeviceMemory.
step placement env SYNAPSWAP_PLACEMENT_CASES="${PLACEMENT_CASES:-20000}" timeout 900 \
    cargo test --release -q -p synapswap --test planner_placement -- --nocapture
# wait-vs-eviction (two callers, three blocks, the transfer thread and the sim's copy stream) has
# outgrown bound 2 since the strict sim (stream queues, events and the device map are locks of
# their own, and the transfer thread drops its lock around every submit): it runs at bound
# EVICTION_PREEMPTIONS (default 1); the other scenarios at LOOM_MAX_PREEMPTIONS.
EVICTION_PREEMPTIONS=${EVICTION_PREEMPTIONS:-1}
loom_models() {
    RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS="$PREEMPTIONS" timeout 1200 \
        cargo test --release -p synapswap --test engine_loom --target-dir target/loom -- --nocapture \
        --skip wait_vs_eviction || return 1
    RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS="$EVICTION_PREEMPTIONS" timeout 1200 \
        cargo test --release -p synapswap --test engine_loom --target-dir target/loom -- --nocapture \
        wait_vs_eviction
}
step loom loom_models
fuzz() (
    # A subshell: the `cd` stays in here.
    if ! cargo fuzz --version >/dev/null 2>&1; then
        cargo install cargo-fuzz --locked || exit 1
    fi
    cd fuzz || exit 1
    rm -f fuzz-*.log
    mkdir -p corpus/capi
    # Two jobs (one per core) under AddressSanitizer; libFuzzer's -timeout turns a hang into a
    # failure. Each job's log is fuzz/fuzz-N.log.
    timeout 2400 cargo +nightly fuzz run capi -- -runs="$FUZZ_RUNS" -jobs=2 -workers=2 \
        -max_len=2048 -timeout=20 -rss_limit_mb=4096
    rc=$?
    cat fuzz-*.log
    [ $rc -eq 0 ] || exit $rc
    # The model file readers (safetensors and GGUF headers), one job.
    mkdir -p corpus/model_files
    timeout 1200 cargo +nightly fuzz run model_files -- -runs="$FUZZ_RUNS" -max_len=4096 \
        -timeout=20 -rss_limit_mb=4096
)
step fuzz fuzz
step asan env SYNAPSWAP_MODEL_CASES=500 RUSTFLAGS="-Zsanitizer=address" ASAN_OPTIONS="detect_leaks=1" timeout 900 \
    cargo +nightly test -q --target x86_64-unknown-linux-gnu --target-dir target/asan -p synapswap --tests
step tsan env SYNAPSWAP_MODEL_CASES=500 RUSTFLAGS="-Zsanitizer=thread" timeout 900 \
    cargo +nightly test -q -Zbuild-std --target x86_64-unknown-linux-gnu --target-dir target/tsan \
    -p synapswap --test engine_shutdown --test engine_stream --test engine_faults --test engine_kernels \
    --test engine_errors --test engine_integrity --test model_state_machine
step miri env PROPTEST_CASES=4 MIRIFLAGS=-Zmiri-disable-isolation timeout 900 \
    cargo +nightly miri test -p synapswap --lib --target-dir target/miri -- planner:: pool::

sum() { awk '{ s += $1 } END { print s + 0 }'; }
steps=$(grep -o "[0-9]* steps" "$log/state-machine.txt" | head -1)
mid=$(grep -o "[0-9]* shut down mid-sequence" "$log/state-machine.txt" | head -1)
kernel_steps=$(grep -o "[0-9]* kernel steps" "$log/state-machine.txt" | head -1)
placed=$(grep -o "placement: [0-9]* random workloads, [0-9]* failures" "$log/placement.txt" | head -1)
kernel_tests=$(grep -o "test result: ok. [0-9]* passed" "$log/kernels.txt" | grep -o "[0-9]* passed" | awk '{ print $1 }' | sum)
fired=$(grep -o "failpoint [a-z-]*: [0-9]* injected" "$log/faults.txt" |
    awk '{ n[$2] += $3 } END { for (k in n) printf "%s %d, ", k, n[k] }' | sed 's/:,/,/g; s/: / /g; s/, $//')
kinds=$(grep -o "failpoint [a-z-]*:" "$log/faults.txt" | sort -u | wc -l)
if [ "$kinds" -lt 6 ]; then
    failures=$((failures + 1))
    failed+=("failpoints ($kinds of 6 fired)")
fi
faults=$(grep -o "test result: ok. [0-9]* passed" "$log/faults.txt" | grep -o "[0-9]* passed" | head -1)
scenarios=$(grep -c "^loom scenario .*interleavings explored" "$log/loom.txt")
interleavings=$(grep -o "[0-9]* interleavings explored" "$log/loom.txt" | awk '{ print $1 }' | sum)
execs=$(grep -ho "^Done [0-9]* runs" fuzz/fuzz-*.log 2>/dev/null | awk '{ print $2 }' | sum)
fuzz_errors=$(cat fuzz/fuzz-*.log 2>/dev/null | grep -c "ERROR: \|panicked at\|deadly signal")
asan=$(grep -c "ERROR: AddressSanitizer" "$log/asan.txt" 2>/dev/null)
miri=$(grep -o "test result: ok. [0-9]* passed" "$log/miri.txt" | head -1)
tsan=$(grep -c "WARNING: ThreadSanitizer" "$log/tsan.txt" 2>/dev/null)
echo
echo "reliability summary ($(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores):"
echo "  state machine: $CASES sequences (${mid:-0 shut down mid-sequence}), ${steps:-0 steps} against the reference model, ${kernel_steps:-0 kernel steps} on strict sim streams"
echo "  ${placed:-placement: not run}"
echo "  kernels racing releases, failing links: ${kernel_tests:-0} test runs passed (${KERNEL_ROUNDS:-20} rounds)"
echo "  loom: $scenarios scenarios, $interleavings interleavings explored (preemption bound $PREEMPTIONS; wait-vs-eviction $EVICTION_PREEMPTIONS)"
echo "  fault injection: ${faults:-0 passed} tests; failpoints fired: ${fired:-none} ($kinds of 6 kinds)"
echo "  fuzz (C ABI, AddressSanitizer): $execs executions, $fuzz_errors crashes/hangs"
echo "  AddressSanitizer (engine suite, leak detection): ${asan:-0} reports"
echo "  ThreadSanitizer (std rebuilt instrumented; integrity, shutdown, streams, faults, errors, state machine): ${tsan:-0} reports"
echo "  Miri (planner and pool unit tests): ${miri:-not run}"
echo "  failures: $failures${failed:+ (${failed[*]})}"
echo "  logs: $log"
exit $((failures > 0))
