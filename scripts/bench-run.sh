#!/usr/bin/env bash
# Regenerates the `synapswap run` sections of BENCHMARKS.md: the default run (sim backend, 2 GB/s
# modelled link, 3.29 GiB model through half of it), the `small-tensors` preset (4,000 tensors
# of 64 KiB, 16 a step) and `scattered-tensors` (the same, a step's tensors never adjacent on the
# host), each three times in a row on this machine, each run followed by the simulator's
# prediction for the same workload (`simulate --workload run|small-tensors|scattered-tensors`).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p synapswap-cli
# $1: run arguments, $2: simulate workload, $3: the section's marker.
section() {
out=$(mktemp)
for i in 1 2 3; do
  # shellcheck disable=SC2086
  ./target/release/synapswap run --json $1 >>"$out"
  ./target/release/synapswap simulate --workload "$2" --latency 10us --json >>"$out"
done
python3 - "$out" BENCHMARKS.md "$3" <<'PY'
import json, sys, re, datetime, os
raw = open(sys.argv[1]).read()
dec = json.JSONDecoder(); runs = []; i = 0
while i < len(raw):
    if raw[i].isspace(): i += 1; continue
    obj, i = dec.raw_decode(raw, i); runs.append(obj)
pairs = list(zip(runs[0::2], runs[1::2]))
r0 = runs[0]
label = {"run": "Default `synapswap run --json`",
         "run-small": "`synapswap run --workload small-tensors --json`",
         "run-scattered": "`synapswap run --workload scattered-tensors --json`"}[sys.argv[3]]
lines = [f"{label} ({r0['workload']}, {r0['model_bytes']/2**30:.2f} GiB model, "
         f"{r0['vram_budget_bytes']/2**30:.2f} GiB budget, {r0['tokens']} tokens after {r0['warmup_tokens']} warm-up; "
         f"{r0['backend_description']}; {os.cpu_count()} cores; {datetime.date.today()}):", "",
         "| run | tokens/s | bound tokens/s | efficiency | moved / minimum | hit rate | stall s | copy idle s | peak / budget | mismatches | simulated tokens/s | simulated / measured |",
         "|---|---|---|---|---|---|---|---|---|---|---|---|"]
for n, (r, s) in enumerate(pairs, 1):
    lines.append(f"| {n} | {r['tokens_per_s']:.3f} | {r['bound_tokens_per_s']:.3f} | {r['efficiency']:.3f} | "
                 f"{r['bytes_h2d']/r['min_bytes_h2d']:.3f} | {r['hit_rate']:.3f} | {r['stall_s']:.2f} | {r['copy_idle_s']:.3f} | "
                 f"{r['peak_device_bytes']/r['vram_budget_bytes']:.3f} | {r['integrity']['mismatches']} | "
                 f"{s['tokens_per_s']:.3f} | {s['tokens_per_s']/r['tokens_per_s']:.3f} |")
table = "\n".join(lines) + "\n"
path = sys.argv[2]
text = open(path).read() if os.path.exists(path) else ""
start, end = f"<!-- bench:{sys.argv[3]} -->", f"<!-- /bench:{sys.argv[3]} -->"
section = f"{start}\n{table}{end}"
if start in text and end in text:
    text = text[:text.index(start)] + section + text[text.index(end) + len(end):]
else:
    text += "\n" + section + "\n"
open(path, "w").write(text)
print(table)
PY
rm -f "$out"
}
section "" run run
section "--workload small-tensors" small-tensors run-small
section "--workload scattered-tensors" scattered-tensors run-scattered
