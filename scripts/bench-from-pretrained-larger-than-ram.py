#!/usr/bin/env python3
"""`synapswap.torch.from_pretrained` on a Hugging Face model larger than this machine's RAM
(issue 16): greedy `generate()` from a cold page cache, on the sim backend.

    target/pyenv/bin/python scripts/bench-from-pretrained-larger-than-ram.py [DIR] [--gib N]
        [--vram 4GiB] [--tokens 3]

Writes DIR (default /tmp/synapswap-big-hf; kept for the next run) once: the `config.json` of a
Llama (hidden 4096, intermediate 11008, as many layers as make RAM + 4 GiB of bf16 weights by
default) and its `model.safetensors`, the tensors named and shaped as transformers builds them,
filled with small random bf16 values (written as raw bytes, no copy of the model in RAM). Then,
the page cache dropped (needs root: /proc/sys/vm/drop_caches), in a child process: loads it with
`from_pretrained(DIR, vram_budget=VRAM, device="cpu")`, times greedy `generate()` of one new
token (the prompt's pass) and of 1 + TOKENS on the same prompt, and prints a Markdown table: load
time, the first token's time, tokens/s of the decode passes (the difference of the two over
TOKENS),
the RAM tier's figures (`Engine.ram_tier()`: cap, cached bytes, bytes read directly from the disk
per pass, `direct_reads_off`), and the child's anonymous memory at the end against the cap plus
the arena plus what it held before the load (torch and transformers themselves), its file pages
(the page cache's) and its peak RSS. Takes minutes: the
disk is read cold. Nothing here is a timed test; BENCHMARKS.md quotes its output."""

import argparse
import json
import os
import subprocess
import sys

CHILD = r"""
import json, sys, time, torch, transformers
from synapswap.torch import from_pretrained

def status():
    out = {}
    for line in open("/proc/self/status"):
        k, _, v = line.partition(":")
        if k in ("RssAnon", "RssFile", "VmHWM"):
            out[k] = int(v.split()[0]) * 1024
    return out

path, vram, tokens = sys.argv[1], sys.argv[2], int(sys.argv[3])
torch.set_num_threads(max(1, len(__import__("os").sched_getaffinity(0))))
base = status()
t0 = time.perf_counter()
model = from_pretrained(path, vram_budget=vram, device="cpu")
load_s = time.perf_counter() - t0
handle = model._synapswap_offload
prompt = torch.tensor([[1, 15043, 29892, 590, 1024, 338]])
with torch.no_grad():
    t1 = time.perf_counter()
    first = model.generate(prompt, max_new_tokens=1, do_sample=False)
    t2 = time.perf_counter()
    # Warm (the landing filled, the cached set read): the prompt's pass alone, then with the
    # decode passes; their difference is the decode's.
    tier_before = handle.engine.ram_tier()
    model.generate(prompt, max_new_tokens=1, do_sample=False)
    t3 = time.perf_counter()
    out = model.generate(prompt, max_new_tokens=1 + tokens, do_sample=False)
    t4 = time.perf_counter()
tier = handle.engine.ram_tier()
assert out.shape[1] == prompt.shape[1] + 1 + tokens, out.shape
assert torch.equal(out[:, : first.shape[1]], first), "greedy decoding is deterministic"
print(json.dumps(dict(
    load_s=load_s, first_s=t2 - t1, warm_first_s=t3 - t2, gen_s=t4 - t3, tokens=tokens,
    weights=sum(p.numel() * p.element_size() for p in model.parameters()),
    arena=handle.engine.vram_budget, base=base, end=status(),
    cap=tier["cap_bytes"], cached=tier["cached_bytes"],
    # Passes since: the warm prompt's, and the 1 + tokens of the last call.
    passes=2 + tokens,
    direct=tier["direct_bytes_read"] - tier_before["direct_bytes_read"],
    direct_busy_s=tier["direct_busy_s"] - tier_before["direct_busy_s"],
    direct_off=tier.get("direct_reads_off"), out=out[0].tolist())))
"""


def write_model(directory, gib):
    import numpy as np
    import torch
    import transformers

    hidden, inter, vocab = 4096, 11008, 32000
    per_layer = (4 * hidden * hidden + 3 * hidden * inter + 2 * hidden) * 2
    fixed = (2 * vocab * hidden + hidden) * 2
    layers = max(1, -(-(gib * 2**30 - fixed) // per_layer))
    config = transformers.LlamaConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=inter,
        num_hidden_layers=layers, num_attention_heads=32, num_key_value_heads=32,
        max_position_embeddings=4096, tie_word_embeddings=False, dtype="bfloat16",
    )
    with torch.device("meta"):
        model = transformers.LlamaForCausalLM(config)
    shapes = [(n, tuple(p.shape)) for n, p in model.state_dict().items()]
    header, offset = {}, 0
    for name, shape in shapes:
        n = 2 * int(np.prod(shape))
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    # Small random bf16 values (the top halves of float32 normals * 0.02), 64 MiB reused.
    rng = np.random.default_rng(0)
    chunk = ((rng.standard_normal(32 << 20, dtype=np.float32) * 0.02).view(np.uint32) >> 16)
    chunk = chunk.astype(np.uint16).tobytes()
    os.makedirs(directory, exist_ok=True)
    part = os.path.join(directory, "model.safetensors.part")
    with open(part, "wb") as f:
        f.write(len(h).to_bytes(8, "little") + h)
        left, k = offset, 0
        while left:
            n = min(left, len(chunk))
            # Every 64 MiB differs in its first bytes.
            f.write(k.to_bytes(2, "little") * 2 + chunk[4:n])
            left -= n
            k = (k + 1) % 30000
    os.replace(part, os.path.join(directory, "model.safetensors"))
    config.save_pretrained(directory)
    return layers


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir", nargs="?", default="/tmp/synapswap-big-hf")
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    ap.add_argument("--gib", type=int, default=round(ram / 2**30) + 4)
    ap.add_argument("--vram", default="4GiB")
    ap.add_argument("--tokens", type=int, default=3)
    a = ap.parse_args()
    model = os.path.join(a.dir, "model.safetensors")
    if not os.path.exists(model) or os.path.getsize(model) < a.gib * 2**30 * 0.97:
        print(f"writing {model} ({a.gib} GiB)...", file=sys.stderr)
        write_model(a.dir, a.gib)
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("1\n")
    out = subprocess.run([sys.executable, "-c", CHILD, a.dir, a.vram, str(a.tokens)],
                         capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"the child failed ({out.returncode}):\n{out.stderr[-4000:]}")
    r = json.loads(out.stdout.strip().splitlines()[-1])
    G = 2**30
    # What the tier may hold, its arena, and the anonymous memory the process had before the
    # load (torch and transformers themselves); the file's pages are the page cache's.
    limit = r["cap"] + r["arena"] + r["base"]["RssAnon"]
    peak, anon, file_pages = r["end"]["VmHWM"], r["end"]["RssAnon"], r["end"]["RssFile"]
    print(f"A random bf16 Llama of {r['weights'] / G:.2f} GiB on {ram / G:.1f} GiB of RAM, "
          f"`from_pretrained(..., vram_budget={a.vram!r}, device='cpu')` (sim backend), "
          f"greedy `generate()` from a cold page cache.")
    print()
    print("| load s | first token s (cold) | warm | decode tokens/s | disk GiB / pass (direct reads) "
          "| disk GB/s | cached GiB of cap | anonymous GiB at the end | cap + arena + anonymous "
          "before the load GiB | file pages GiB | peak RSS GiB | direct reads off |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    rate = r["direct"] / r["direct_busy_s"] / 1e9 if r["direct_busy_s"] > 0 else float("nan")
    decode = r["gen_s"] - r["warm_first_s"]
    print(f"| {r['load_s']:.1f} | {r['first_s']:.1f} | {r['warm_first_s']:.1f} | "
          f"{r['tokens'] / decode if decode > 0 else float('nan'):.3f} | "
          f"{r['direct'] / r['passes'] / G:.2f} | {rate:.2f} | "
          f"{r['cached'] / G:.2f} of {r['cap'] / G:.2f} | {anon / G:.2f} | {limit / G:.2f} | "
          f"{file_pages / G:.2f} | {peak / G:.2f} | {r['direct_off'] or 'no'} |")
    print()
    print(f"Anonymous memory beyond the cap + arena + what the process held before the load: "
          f"{(anon - limit) / G:+.2f} GiB (the forward's own: activations, the KV cache, torch's "
          f"buffers); {r['tokens']} decode tokens {r['out'][-r['tokens']:]}.")


if __name__ == "__main__":
    main()
