#!/usr/bin/env bash
# The GPU check of issue 5, run on the GPU machine with binaries built elsewhere
# (scripts/gpu-prepare.sh puts them in gpu-bin/): it builds nothing and takes 2-3 minutes
# (assumed: it has not run on a GPU yet).
#   1. probe: device, memory, pinned/pageable H2D by chunk size, D2H, copy under a kernel;
#   2. integrity: every byte of every block use checked (--verify full) after real async copies,
#      over thousands of evictions;
#   3. the engine's CUDA test (byte-exact streaming through a small pool);
#   4. the default `synapswap run --backend "$BACKEND"`: efficiency against the bound computed from the
#      probe's pinned bandwidth must be at least 0.9;
#   5. `run --model` of a 1 GiB safetensors file the script writes: the mapping registered
#      read-only (or used pageable), every byte of every use checked against the file.
# Results go to $OUT (the device tool's output folder) or gpu-out/; the exit status is 0 only if
# every check passed.
set -uo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-gpu-bin}
OUT=${OUT:-gpu-out}
# BACKEND=sim dry-runs every step on the simulated device (to check this script without a GPU).
BACKEND=${BACKEND:-cuda}
mkdir -p "$OUT"
fail=0
run() {
    local name=$1
    shift
    echo "== $name: $*"
    if ! timeout 150 "$@" >"$OUT/$name.out" 2>"$OUT/$name.err"; then
        echo "FAILED: $name"
        tail -20 "$OUT/$name.err"
        fail=1
    fi
}
nvidia-smi --query-gpu=name,memory.total,driver_version,pcie.link.gen.current,pcie.link.width.current \
    --format=csv | tee "$OUT/nvidia-smi.csv" || true
run probe "$BIN/synapswap" probe --backend "$BACKEND" --size 1GiB --json
run integrity "$BIN/synapswap" run --backend "$BACKEND" --layers 2 --vram 400MiB --tokens 200 \
    --chunk 1MiB --verify full --json
run engine_test "$BIN/engine_stream" --test-threads 1 --nocapture
run run "$BIN/synapswap" run --backend "$BACKEND" --tokens 16 --json
# A model file (issue 15): a 1 GiB safetensors file of random bf16 layers, mapped and registered
# read-only with CUDA (cuMemHostRegister READ_ONLY, where the driver allows it; else pageable:
# `pageable_files`), every use checked against the file.
python3 - "$OUT/model.safetensors" <<'PY' || fail=1
import json, os, struct, sys
header, off = {}, 0
for l in range(16):
    header[f"model.layers.{l}.mlp.up_proj.weight"] = {"dtype": "BF16", "shape": [8192, 4096],
                                                       "data_offsets": [off, off + (64 << 20)]}
    off += 64 << 20
h = json.dumps(header).encode()
h += b" " * ((8 - len(h) % 8) % 8)
with open(sys.argv[1], "wb") as f:
    f.write(struct.pack("<Q", len(h)) + h)
    for _ in range(16):
        f.write(os.urandom(64 << 20))
PY
run model "$BIN/synapswap" run --backend "$BACKEND" --model "$OUT/model.safetensors" --vram 512MiB \
    --tokens 8 --verify full --json
rm -f "$OUT/model.safetensors"
python3 - "$OUT" <<'PY' || fail=1
import json, sys, os
out = sys.argv[1]
def load(name):
    try:
        return json.load(open(os.path.join(out, name + ".out")))
    except Exception as e:
        print(f"{name}: no result ({e})")
        return None
ok = True
p = load("probe")
if p:
    mem = (f"; memory {p['free_bytes']/2**30:.1f} of {p['total_bytes']/2**30:.1f} GiB free"
           if p.get("total_bytes") else "")
    print(f"device: {p['device']}{mem}")
    for c in p["pinned_h2d"]:
        print(f"  pinned H2D {c['chunk_bytes']>>10:>6} KiB chunks: {c['bytes_per_s']/1e9:6.2f} GB/s")
    print(f"  pageable H2D: {p['pageable_h2d_bytes_per_s']/1e9:.2f} GB/s; D2H: {p['d2h_bytes_per_s']/1e9:.2f} GB/s")
    o = p.get("overlap")
    if o:
        print(f"  copy under a kernel: kernel {o['kernel_s']*1e3:.1f} ms, copy {o['copy_s']*1e3:.1f} ms, "
              f"both {o['both_s']*1e3:.1f} ms: {o['hidden_fraction']*100:.0f}% hidden")
i = load("integrity")
if i:
    good = i["integrity"]["mismatches"] == 0 and i["evictions"] >= 1000
    ok &= good
    print(f"integrity: {i['integrity']['verified_blocks']} uses, {i['integrity']['verified_bytes']/2**30:.1f} GiB "
          f"checked, {i['evictions']} evictions, {i['integrity']['mismatches']} mismatches: {'PASS' if good else 'FAIL'}")
else:
    ok = False
r = load("run")
if r and p:
    bw = max(c["bytes_per_s"] for c in p["pinned_h2d"] if c["chunk_bytes"] >= 8 << 20)
    bound = 1 / max(r["compute_s_per_token"], max(0, r["model_bytes"] - r["vram_budget_bytes"]) / bw)
    eff = r["tokens_per_s"] / bound
    good = eff >= 0.9 and r["integrity"]["mismatches"] == 0
    ok &= good
    print(f"run: {r['tokens_per_s']:.2f} tokens/s; bound {bound:.2f} from the probe's {bw/1e9:.2f} GB/s: "
          f"efficiency {eff:.3f} (in-run bound {r['bound_tokens_per_s']:.2f}: {r['efficiency']:.3f}); "
          f"moved/min {r['bytes_h2d']/max(1, r['min_bytes_h2d']):.3f}; {'PASS' if good else 'FAIL'}")
else:
    ok = False
sys.exit(0 if ok else 1)
PY
echo "gpu-check: $([ $fail = 0 ] && echo PASS || echo FAIL)"
exit $fail
