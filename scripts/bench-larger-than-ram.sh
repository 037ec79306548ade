#!/usr/bin/env bash
# Issue 16's benchmark: a model file larger than this machine's RAM, run from a cold page cache
# with the RAM tier on and off (the page cache left to itself), side by side in one run.
#   scripts/bench-larger-than-ram.sh [DIR] [GiB]   (defaults: /tmp/synapswap-big, RAM + 4 GiB)
# Writes DIR/model.safetensors (GiB of 256 MiB bf16 layers; kept for the next run), drops the page
# cache before each run (needs root: /proc/sys/vm/drop_caches) and prints the figures as a
# Markdown table, with the peak RSS and the CPU time of each run (/usr/bin/time; the whole
# process, the kernel's work for its page faults, read-aheads and page-outs included). Takes minutes: the disk is read
# cold at its own speed. Nothing is timed in a test; BENCHMARKS.md quotes this script's output.
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${1:-/tmp/synapswap-big}
RAM_GIB=$(awk '/MemTotal/ {print int($2 / 1048576 + 0.5)}' /proc/meminfo)
GIB=${2:-$((RAM_GIB + 4))}
VRAM=${VRAM:-4GiB}
TOKENS=${TOKENS:-3}
# BIN: a binary built before (so that a build meanwhile cannot change it between the runs).
if [ -z "${BIN:-}" ]; then
    BIN=target/release/synapswap
    cargo build --release -q -p synapswap-cli
fi
mkdir -p "$DIR"
MODEL="$DIR/model.safetensors"
LAYERS=$((GIB * 4))
if [ ! -f "$MODEL" ] || [ "$(stat -c %s "$MODEL")" -lt $((LAYERS * 268435456)) ]; then
    echo "writing $MODEL ($GIB GiB)..." >&2
    python3 - "$MODEL" "$LAYERS" <<'PY'
import json, os, struct, sys
path, layers = sys.argv[1], int(sys.argv[2])
n = 256 << 20
header = {f"model.layers.{l}.mlp.up_proj.weight":
          {"dtype": "BF16", "shape": [n // 2], "data_offsets": [l * n, (l + 1) * n]}
          for l in range(layers)}
h = json.dumps(header).encode()
h += b" " * ((8 - len(h) % 8) % 8)
buf = bytearray(os.urandom(n))
with open(path + ".part", "wb") as f:
    f.write(struct.pack("<Q", len(h)) + h)
    for l in range(layers):
        buf[:8] = struct.pack("<Q", l)  # every layer's bytes differ
        f.write(buf)
os.replace(path + ".part", path)
PY
fi
run() {
    sync
    echo 1 > /proc/sys/vm/drop_caches
    /usr/bin/time -f "%M %U %S %e" -o "$DIR/rss.txt" "$BIN" run --model "$MODEL" --vram "$VRAM" --h2d max \
        --verify sampled --tokens "$TOKENS" --json "$@" > "$DIR/run.json"
    python3 - "$DIR/run.json" "$DIR/rss.txt" "$*" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
rss_kib, user_s, sys_s, wall_s = open(sys.argv[2]).read().split()[-4:]
rss_kib = int(rss_kib)
h = r["host_tier"]
m, v, c = r["model_bytes"], r["vram_budget_bytes"], h["cached_bytes"]
passes = r["tokens"]
disk_pass = h["disk_bytes_read"] / passes
need = max(m - v - c, 0)
bw = h["disk_bytes_per_s"]
bound = h["bound_tokens_per_s"] or float("nan")
disk_bound = h["disk_bound_tokens_per_s"] or float("nan")
G = 1 << 30
print(f"| {sys.argv[3] or 'RAM tier on'} | {r['tokens_per_s']:.4f} | {bound:.4f} | {r['tokens_per_s'] / bound:.2f} | "
      f"{disk_bound:.4f} | {r['tokens_per_s'] / disk_bound:.2f} | {h['link_bytes_per_s'] / 1e9:.2f} of {r['h2d_bytes_per_s'] / 1e9:.2f} | "
      f"{disk_pass / G:.2f} | {need / G:.2f} | {disk_pass / need if need else float('nan'):.2f} | "
      f"{h['page_cache_hit_rate']:.3f} | {c / G:.2f} of {h['cap_bytes'] / G:.2f} | {bw / 1e9:.2f} | "
      f"{h['disk_rate_from']} | {rss_kib / 1048576:.2f} | {float(user_s):.0f} / {float(sys_s):.0f} of {float(wall_s):.0f} | {r['integrity']['mismatches']} |")
PY
}
echo "Model $GIB GiB on $RAM_GIB GiB of RAM, $VRAM budget (sim arena), --h2d max, $TOKENS timed passes after a cold warm-up."
echo
echo "| run | tokens/s | bound | of bound | disk bound | of disk bound | link GB/s (of memcpy alone) | disk GiB / pass | M - V - C GiB | ratio | page cache hit | cached GiB of cap | disk GB/s | measured on | peak RSS GiB | CPU user / sys of wall s | mismatches |"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
run
# The disk on its own, in the same script run, for comparison with the rate the tier measured:
# four `dd iflag=direct` of 4 MiB requests at once (the tier's readers: `ram_tier/disk_reader.rs`),
# 1 GiB each, from the middle of the cold file.
sync
echo 1 > /proc/sys/vm/drop_caches
t0=$(date +%s.%N)
for k in 0 1 2 3; do
    dd if="$MODEL" of=/dev/null bs=4M count=256 skip=$((LAYERS * 64 / 2 + k * 256)) iflag=direct 2>/dev/null &
done
wait
t1=$(date +%s.%N)
python3 -c "import sys; print(f'\nThe disk alone (4 x dd iflag=direct bs=4M, 4 GiB): {4 * 2**30 / (float(sys.argv[2]) - float(sys.argv[1])) / 1e9:.2f} GB/s\n')" "$t0" "$t1"
run --no-ram-tier
