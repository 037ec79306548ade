#!/usr/bin/env bash
# Windows (MinGW) check, on Linux: cross-builds SynapSwap for x86_64-pc-windows-gnu and runs what it
# built under Wine.
#
#   scripts/windows-check.sh            # everything below (~10 minutes on 2 cores, first run)
#   SYNAPSWAP_WINDOWS_BUILD_ONLY=1 scripts/windows-check.sh   # install + cross-build only
#
# 1. Installs what it needs, only what is missing: the rustup target, Debian's mingw-w64 C
#    toolchain and Wine (apt-get; run as root, as CI and the build machines are).
# 2. Cross-builds the engine, the CLI (synapswap.exe), the C ABI (synapswap.dll, its import
#    library libsynapswap.dll.a, the static library libsynapswap.a) and the Python extension (a
#    win_amd64 abi3 wheel; Python's import library is generated, no Windows Python needed). The
#    wheel is built, not run: there is no Windows Python here.
# 3. Runs the engine's test binaries under Wine (cargo test with Wine as the runner).
# 4. Runs the CLI under Wine: `run` (every block use verified, 0 mismatches), `simulate`,
#    `probe --backend sim`, and `probe --backend cuda`, which must fail naming nvcuda.dll.
# 5. Builds examples/c/*.c with mingw against the DLL and against the static library, and runs
#    each under Wine; each checks every byte it reads.
#
# Wine 8 (Debian 12's) has no bcryptprimitives.dll, whose ProcessPrng Rust's std imports, so
# every Rust .exe would fail to start (status c0000135). scripts/windows/bcryptprimitives.c is a
# test-only stand-in (ProcessPrng over RtlGenRandom), built here into the system32 of this
# script's own Wine prefix (target/wine-prefix), so every .exe run there finds it, test binaries
# and doctests included; real Windows has the DLL and nothing ships the stand-in.
#
# The engine's tests run one at a time (--test-threads=1): under Wine on two cores, tests that
# compare a timed run with the simulator's prediction lose to contention, and Wine's timers
# oversleep by 0.1-1.1 ms on average (scripts/windows/timer-probe.c, run below; BENCHMARKS.md), so nothing
# under Wine is a benchmark.
# Every test runs here: routed_fields_drive_run_and_the_simulator_alike, skipped under Wine
# before 2026-12-03, now paces steps of 5 ms rather than 0.5 ms (its run measured 122-129 MB
# against the simulator's 158 MB under Wine with the short steps, 158 MB in four runs since).
set -euo pipefail
cd "$(dirname "$0")/.."
T=x86_64-pc-windows-gnu
CC_WIN=x86_64-w64-mingw32-gcc
WINE=/usr/lib/wine/wine64
say() { printf '\n== %s\n' "$*"; }

say "install (only what is missing)"
installed=$(rustup target list --installed)
if ! grep -qx "$T" <<<"$installed"; then
    rustup target add "$T"
fi
need=()
command -v "$CC_WIN" >/dev/null || need+=(gcc-mingw-w64-x86-64)
[ -x "$WINE" ] || need+=(wine64 wine)
if [ ${#need[@]} -gt 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
version=$("$CC_WIN" --version)
echo "${version%%$'\n'*}"

say "cross-build: engine, CLI, C ABI"
cargo build --release --target "$T" -p synapswap -p synapswap-cli -p synapswap-capi
OUT=target/$T/release
for f in synapswap.exe synapswap.dll libsynapswap.dll.a libsynapswap.a; do
    [ -f "$OUT/$f" ] || { echo "missing $OUT/$f" >&2; exit 1; }
    printf '  %-20s %s bytes\n' "$f" "$(stat -c %s "$OUT/$f")"
done

say "cross-build: Python extension (win_amd64 wheel, not run here)"
VENV=${SYNAPSWAP_VENV:-$PWD/target/pyenv}
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install -q maturin
rm -rf "target/wheels-$T"
(cd crates/synapswap-py && PATH="$VENV/bin:$PATH" maturin build --release --target "$T" \
    --out "../../target/wheels-$T" 2>&1 | tail -2)
WHEEL=$(ls "target/wheels-$T"/synapswap-*-win_amd64.whl)
"$VENV/bin/python" - "$WHEEL" <<'EOF'
import sys, zipfile
names = zipfile.ZipFile(sys.argv[1]).namelist()
pyd = [n for n in names if n.endswith(".pyd")]
assert pyd and "synapswap/torch.py" in names, names
print(f"  {sys.argv[1]}: {pyd[0]} and {len(names) - 1} other files")
EOF

if [ -n "${SYNAPSWAP_WINDOWS_BUILD_ONLY:-}" ]; then
    echo "windows-check: build only (SYNAPSWAP_WINDOWS_BUILD_ONLY): built, nothing run"
    exit 0
fi

# No Mono or Gecko (they would be downloaded, and nothing here needs them).
export WINEPREFIX=$PWD/target/wine-prefix WINEDEBUG=-all WINEDLLOVERRIDES="mscoree,mshtml="
if [ ! -d "$WINEPREFIX/drive_c/windows/system32" ]; then
    say "a Wine prefix in $WINEPREFIX (first run only)"
    "$WINE" wineboot --init > target/wine-prefix.log 2>&1 || true
    [ -d "$WINEPREFIX/drive_c/windows/system32" ] || {
        cat target/wine-prefix.log; echo "wineboot made no prefix in $WINEPREFIX" >&2; exit 1
    }
fi
"$CC_WIN" -O2 -shared -o "$WINEPREFIX/drive_c/windows/system32/bcryptprimitives.dll" \
    scripts/windows/bcryptprimitives.c -ladvapi32

say "the engine's tests under Wine"
CARGO_TARGET_X86_64_PC_WINDOWS_GNU_RUNNER=$WINE cargo test --release --target "$T" -p synapswap \
    -- --test-threads=1 2>&1 |
    tee target/windows-tests.log | grep -E '^(test result|running|error|failures)' || true
grep -q '^test result: FAILED\|^error' target/windows-tests.log && { echo "tests failed under Wine" >&2; exit 1; }
[ "$(grep -c '^test result: ok' target/windows-tests.log)" -ge 1 ] || { echo "no tests ran" >&2; exit 1; }

say "the CLI under Wine"
EXE=$OUT/synapswap.exe
"$WINE" "$EXE" run --tokens 2 | tee target/windows-run.log | tail -4
grep -q ', 0 mismatches' target/windows-run.log || { echo "run: not verified" >&2; exit 1; }
"$WINE" "$EXE" simulate --workload llama-7b --vram 4GiB --tokens 2 | tail -4
"$WINE" "$EXE" probe --backend sim | tail -3
if "$WINE" "$EXE" probe --backend cuda > target/windows-cuda.log 2>&1; then
    echo "probe --backend cuda succeeded under Wine: expected no driver" >&2; exit 1
fi
grep -q 'nvcuda.dll' target/windows-cuda.log || { cat target/windows-cuda.log; exit 1; }
echo "  probe --backend cuda: $(tail -1 target/windows-cuda.log)"

say "timer precision under Wine (scripts/windows/timer-probe.c; quoted in BENCHMARKS.md)"
"$CC_WIN" -O2 -Wall -Werror scripts/windows/timer-probe.c -o "target/$T/timer-probe.exe"
# Figures only: a Wine without high-resolution timers makes std fall back to Sleep, not a failure.
"$WINE" "target/$T/timer-probe.exe" || echo "timer-probe: no high-resolution timer under this Wine"

say "examples/c against synapswap.dll and libsynapswap.a, under Wine"
C_OUT=target/$T/c-examples
rm -rf "$C_OUT" && mkdir -p "$C_OUT"
cp "$OUT/synapswap.dll" "$C_OUT/"
# What a program linking the static Rust library needs besides it (rustc's own list).
cargo rustc --release --target "$T" -p synapswap-capi --crate-type staticlib -- \
    --print native-static-libs > target/windows-static-libs.log 2>&1 || {
    cat target/windows-static-libs.log; exit 1
}
STATIC_LIBS=$(sed -n 's/.*native-static-libs: //p' target/windows-static-libs.log | tail -1)
[ -n "$STATIC_LIBS" ] || { cat target/windows-static-libs.log; echo "no native-static-libs" >&2; exit 1; }
CFLAGS=(-std=c11 -O1 -Wall -Wextra -Werror -Iinclude -Iexamples/c -static)
for src in examples/c/*.c; do
    name=$(basename "$src" .c)
    "$CC_WIN" "${CFLAGS[@]}" "$src" -o "$C_OUT/$name-dll.exe" "$OUT/libsynapswap.dll.a" -lpthread
    # shellcheck disable=SC2086 # a list of linker flags
    "$CC_WIN" "${CFLAGS[@]}" "$src" -o "$C_OUT/$name-static.exe" "$OUT/libsynapswap.a" \
        $STATIC_LIBS -lpthread
    for kind in dll static; do
        if ! "$WINE" "$C_OUT/$name-$kind.exe" > "$C_OUT/$name-$kind.log" 2>&1; then
            cat "$C_OUT/$name-$kind.log"; echo "$name ($kind) failed under Wine" >&2; exit 1
        fi
        echo "  $name ($kind): $(tail -1 "$C_OUT/$name-$kind.log")"
    done
done

say "windows-check: passed"
