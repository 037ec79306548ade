#!/usr/bin/env bash
# Prints the sample plans of BENCHMARKS.md ("A sample plan"): `synapswap plan` of a Llama-7B-shaped
# safetensors file (bf16, 32 layers, 12.55 GiB) with a 4 GiB budget, on an RTX 4090 and an H200
# profile, at batch 1 and 64. The file is a real header over sparse data (no bytes on disk): a plan
# reads only the header.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p synapswap-cli
f=$(mktemp --suffix=.safetensors)
trap 'rm -f "$f"' EXIT
python3 - "$f" <<'PY'
import json, struct, sys
h, ff, L, V = 4096, 11008, 32, 32000
shapes = [("model.embed_tokens.weight", [V, h])]
for l in range(L):
    p = f"model.layers.{l}."
    shapes += [(p + f"self_attn.{n}.weight", [h, h]) for n in ("q_proj", "k_proj", "v_proj", "o_proj")]
    shapes += [(p + "mlp.gate_proj.weight", [ff, h]), (p + "mlp.up_proj.weight", [ff, h]),
               (p + "mlp.down_proj.weight", [h, ff]), (p + "input_layernorm.weight", [h]),
               (p + "post_attention_layernorm.weight", [h])]
shapes += [("model.norm.weight", [h]), ("lm_head.weight", [V, h])]
header, off = {}, 0
for name, shape in shapes:
    n = 2
    for d in shape:
        n *= d
    header[name] = {"dtype": "BF16", "shape": shape, "data_offsets": [off, off + n]}
    off += n
hb = json.dumps(header).encode()
hb += b" " * ((8 - len(hb) % 8) % 8)
with open(sys.argv[1], "wb") as f:
    f.write(struct.pack("<Q", len(hb)) + hb)
    f.truncate(8 + len(hb) + off)
PY
for gpu in rtx4090 h200; do
  for batch in 1 64; do
    echo "### \`synapswap plan --model llama-7b.safetensors --vram 4GiB --gpu $gpu --batch $batch\`"
    echo
    ./target/release/synapswap plan --model "$f" --vram 4GiB --gpu "$gpu" --batch "$batch" | sed "s#$f#llama-7b.safetensors#"
    echo
  done
done
