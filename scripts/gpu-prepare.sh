#!/usr/bin/env bash
# Builds, on this (GPU-less) machine, what scripts/gpu-check.sh runs on the GPU machine, and puts
# it in gpu-bin/ (ignored by git; name it in the device tool's `carry`). Nothing is built there.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx 'gpu-bin' .git/info/exclude 2>/dev/null || echo 'gpu-bin' >> .git/info/exclude
cargo build --release -q -p synapswap-cli
cargo test --release -q -p synapswap --test engine_stream --no-run 2>/dev/null
rm -rf gpu-bin && mkdir -p gpu-bin
cp target/release/synapswap gpu-bin/
cp "$(ls -t target/release/deps/engine_stream-* | grep -v '\.d$' | head -1)" gpu-bin/engine_stream
# The Python wheel (abi3: any CPython >= 3.9) for scripts/gpu-bench-torch.py; on the GPU machine:
#   pip install --no-deps gpu-bin/synapswap-*.whl && python3 scripts/gpu-bench-torch.py
VENV=${SYNAPSWAP_VENV:-$PWD/target/pyenv}
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install -q maturin
"$VENV/bin/maturin" build --release -q -m crates/synapswap-py/Cargo.toml -o gpu-bin
ls -la gpu-bin
