#!/usr/bin/env python3
"""Anonymous memory of loading a Hugging Face model: transformers' own from_pretrained against
synapswap.torch.from_pretrained (issue 17), each in a fresh process, side by side in one run.

    target/pyenv/bin/python scripts/bench-from-pretrained.py [--hidden 2048] [--layers 16]

Writes a random bf16 Llama (default about 1.3 GiB) with save_pretrained into a temporary
directory, then in a child process per loader: imports torch and transformers, builds a tiny
model once (the modeling code's own first allocations), reads RssAnon and RssFile from
/proc/self/status, loads the model (synapswap: sim backend, vram_budget a quarter of the model;
its arena is anonymous host memory and is reported apart), reads them again, runs one forward to
check the model works, and prints the growth as a fraction of the model's size. Prints a
Markdown table; BENCHMARKS.md quotes it. Nothing here is a timed test."""

import argparse
import json
import os
import subprocess
import sys
import tempfile

CHILD = r"""
import json, sys, torch, transformers
def status():
    out = {}
    for line in open("/proc/self/status"):
        k, _, v = line.partition(":")
        if k in ("RssAnon", "RssFile"):
            out[k] = int(v.split()[0]) * 1024
    return out
path, loader = sys.argv[1], sys.argv[2]
tiny = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
                                num_hidden_layers=1, num_attention_heads=2)
transformers.AutoModelForCausalLM.from_config(tiny)
size = sum(t["nbytes"] for t in __import__("synapswap").model_tensors(path))
if loader == "synapswap":
    from synapswap.torch import from_pretrained
    from_pretrained(path, vram_budget=size, device="cpu")._synapswap_offload.remove()
before = status()
arena = 0
if loader == "transformers":
    model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16)
else:
    from synapswap.torch import from_pretrained
    model = from_pretrained(path, vram_budget=size // 4, device="cpu")
    arena = model._synapswap_offload.engine.vram_budget
after = status()
with torch.no_grad():
    logits = model(torch.tensor([[1, 2, 3]])).logits
assert torch.isfinite(logits.float()).all()
used = status()
print(json.dumps(dict(size=size, arena=arena, anon=after["RssAnon"] - before["RssAnon"],
                      file=after["RssFile"] - before["RssFile"],
                      anon_used=used["RssAnon"] - before["RssAnon"],
                      file_used=used["RssFile"] - before["RssFile"])))
"""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--layers", type=int, default=16)
    args = ap.parse_args()
    import torch
    import transformers

    with tempfile.TemporaryDirectory() as d:
        config = transformers.LlamaConfig(
            vocab_size=32000, hidden_size=args.hidden, intermediate_size=args.hidden * 11 // 4,
            num_hidden_layers=args.layers, num_attention_heads=args.hidden // 128,
            num_key_value_heads=max(args.hidden // 512, 1))
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
        model.save_pretrained(d)
        del model
        rows = {}
        for loader in ("transformers", "synapswap"):
            out = subprocess.run([sys.executable, "-c", CHILD, d, loader], check=True,
                                 capture_output=True, text=True).stdout
            rows[loader] = json.loads(out.strip().splitlines()[-1])
    G = 1 << 30
    size = rows["transformers"]["size"]
    print(f"Random bf16 Llama, hidden {args.hidden}, {args.layers} layers: {size / G:.2f} GiB "
          f"of weights; growth measured around the load alone, in a fresh process each.")
    print()
    print("| loader | anonymous grown by the load, GiB | of the model | of which the sim arena, "
          "GiB | beyond the arena, of the model | file pages grown, GiB | after one forward: "
          "anonymous beyond the arena, of the model | file pages, GiB |")
    print("|---|---|---|---|---|---|---|---|")
    for loader, r in rows.items():
        print(f"| {loader} | {r['anon'] / G:.3f} | {r['anon'] / size:.3f} | {r['arena'] / G:.3f} "
              f"| {(r['anon'] - r['arena']) / size:.3f} | {r['file'] / G:.3f} "
              f"| {(r['anon_used'] - r['arena']) / size:.3f} | {r['file_used'] / G:.3f} |")


if __name__ == "__main__":
    main()
