#!/usr/bin/env python3
"""End to end on the sim backend (issue 17): greedy `generate()` of an offloaded bf16 Llama
against the plain model, side by side in one run.

    target/pyenv/bin/python scripts/bench-torch-generate.py [--tokens 24] [--rounds 3]
        [--links 2GB/s,25GB/s]

The model: a random bf16 Llama (hidden 512, 8 layers, tied embeddings, vocab 32000), offloaded
with `synapswap.torch.offload(model, vram_budget=half its bytes, device="cpu",
sim_h2d=LINK)` for each LINK, and a deep copy of it left plain. Each round times the plain
model's `generate()` of TOKENS new tokens (greedy, a 16-token prompt) and then the offloaded
one's, after one untimed warm-up of each (the first forward records the order it declares);
medians over the rounds. The bound is the larger of the plain time and the bytes the engine
copied during the timed `generate()` (its `bytes_h2d`) over the sim link's rate: the offloaded
model cannot be faster than either. Also reports the keep plan the engine settled on (kept MiB:
the blocks it holds for good; the rest streams through what is left). Prints a Markdown table; BENCHMARKS.md
quotes it. Also checks
that both models give the same tokens. Nothing here is a timed test."""

import argparse
import copy
import statistics
import time

import torch
import transformers

import synapswap
from synapswap.torch import offload


def build(seed=0):
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=32000, hidden_size=512, intermediate_size=1376, num_hidden_layers=8,
        num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=512,
        tie_word_embeddings=True,
    )
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.5 if p.dim() > 1 else 0.1)
    return model.eval()


def timed_generate(model, prompt, tokens):
    t = time.perf_counter()
    with torch.no_grad():
        out = model.generate(prompt, max_new_tokens=tokens, min_new_tokens=tokens,
                             do_sample=False)
    return time.perf_counter() - t, out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=24)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--links", default="2GB/s,25GB/s")
    a = ap.parse_args()
    torch.set_num_threads(1)
    plain = build()
    size = sum(t.numel() * t.element_size()
               for t in list(plain.parameters()) + list(plain.buffers()))
    prompt = torch.randint(0, 32000, (1, 16), generator=torch.Generator().manual_seed(1))
    print(f"bf16 Llama, hidden 512, 8 layers, tied embeddings: {size / 2**20:.1f} MiB; "
          f"offloaded at half ({size // 2 / 2**20:.1f} MiB) on the sim backend; greedy "
          f"generate() of {a.tokens} tokens after a 16-token prompt, one torch thread; medians of "
          f"{a.rounds} rounds.")
    print()
    print("| sim link | plain s | synapswap s | of plain | MiB copied | copy time at the link's "
          "rate s | bound s | of bound | stall s | kept MiB | same tokens |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for link in a.links.split(","):
        model = copy.deepcopy(plain)
        handle = offload(model, vram_budget=size // 2, device="cpu", sim_h2d=link)
        rate = handle.engine.sim_h2d_bytes_per_s
        timed_generate(plain, prompt, a.tokens)
        timed_generate(model, prompt, a.tokens)
        ps, ss, copied, stalls, same = [], [], [], [], True
        for _ in range(a.rounds):
            t, want = timed_generate(plain, prompt, a.tokens)
            ps.append(t)
            before = handle.stats()
            t, got = timed_generate(model, prompt, a.tokens)
            after = handle.stats()
            ss.append(t)
            copied.append(after["bytes_h2d"] - before["bytes_h2d"])
            stalls.append(after["stall_s"] - before["stall_s"])
            kept = after["kept_bytes"]
            same &= torch.equal(want, got)
        handle.remove()
        p, s, c = statistics.median(ps), statistics.median(ss), statistics.median(copied)
        copy_s = c / rate if rate else float("nan")
        bound = max(p, copy_s) if rate else p
        print(f"| {link} | {p:.3f} | {s:.3f} | {s / p:.2f}x | {c / 2**20:.1f} | {copy_s:.3f} | "
              f"{bound:.3f} | {s / bound:.2f}x | {statistics.median(stalls):.3f} | "
              f"{kept / 2**20:.1f} | {'yes' if same else 'NO'} |")


if __name__ == "__main__":
    main()
