#!/usr/bin/env python3
"""Decode speed of a 7B-shaped Llama (bf16, random weights, no downloads) on one GPU, in one run:

1. all weights resident on the GPU (the compute floor);
2. accelerate's ``dispatch_model`` with a 4 GiB budget for weights (its offload hooks);
3. ``synapswap.torch.offload`` with the same budget;
4. ``synapswap.torch.from_pretrained`` of the same model saved with ``save_pretrained`` (its
   weights stay in the memory-mapped safetensors; --no-from-pretrained skips it);
5. the bound: (weight bytes - budget) / pinned host-to-device bandwidth measured here, or the
   resident speed if that is lower.

Prints a Markdown table (and JSON with --json). Needs torch, transformers and accelerate, and the
synapswap wheel (scripts/gpu-prepare.sh builds it into gpu-bin/). Runs in about 3 minutes
(assumed: it has not run on a GPU yet).
"""

import argparse
import copy
import gc
import json
import time

import torch

p = argparse.ArgumentParser()
p.add_argument("--budget-gib", type=float, default=4.0)
p.add_argument("--layers", type=int, default=32)
p.add_argument("--tokens", type=int, default=16)
p.add_argument("--accelerate-tokens", type=int, default=4)
p.add_argument("--json", action="store_true")
p.add_argument("--no-from-pretrained", action="store_true")
args = p.parse_args()
assert torch.cuda.is_available(), "needs a GPU"
dev = torch.device("cuda", 0)
budget = int(args.budget_gib * (1 << 30))


def build():
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.modeling_utils import no_init_weights

    cfg = LlamaConfig(
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=args.layers,
        num_attention_heads=32,
        num_key_value_heads=32,
        vocab_size=32000,
        torch_dtype=torch.bfloat16,
    )
    with no_init_weights():
        model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for t in model.parameters():
            t.normal_(0, 0.02, generator=g)
    return model.eval()


def decode(model, n, device):
    ids = torch.randint(0, 32000, (1, 8), device=device)
    with torch.no_grad():
        out = model(ids, use_cache=True)  # prefill, untimed
        past = out.past_key_values
        nxt = out.logits[:, -1:].argmax(-1)
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(n):
            out = model(nxt, past_key_values=past, use_cache=True)
            past = out.past_key_values
            nxt = out.logits[:, -1:].argmax(-1)
        torch.cuda.synchronize()
    return n / (time.perf_counter() - t)


def pinned_bandwidth():
    n = 1 << 30
    src = torch.empty(n, dtype=torch.uint8, pin_memory=True)
    dst = torch.empty(n, dtype=torch.uint8, device=dev)
    best = float("inf")
    for _ in range(3):
        torch.cuda.synchronize()
        t = time.perf_counter()
        dst.copy_(src, non_blocking=True)
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return n / best


base = build()
weight_bytes = sum(t.numel() * t.element_size() for t in base.parameters())
rows = {}

m = copy.deepcopy(base).to(dev)
rows["all weights resident"] = decode(m, args.tokens, dev)
del m
gc.collect()
torch.cuda.empty_cache()

from accelerate import dispatch_model, infer_auto_device_map  # noqa: E402

m = copy.deepcopy(base)
dmap = infer_auto_device_map(
    m,
    max_memory={0: budget, "cpu": 512 << 30},
    no_split_module_classes=["LlamaDecoderLayer"],
)
m = dispatch_model(m, device_map=dmap)
rows["accelerate dispatch_model"] = decode(m, args.accelerate_tokens, dev)
del m
gc.collect()
torch.cuda.empty_cache()

from synapswap.torch import offload  # noqa: E402

m = copy.deepcopy(base)
handle = offload(m, budget, device="cuda")
decode(m, 2, dev)  # the first forwards record and declare the order
rows["synapswap"] = decode(m, args.tokens, dev)
stats = handle.stats()
handle.remove()
del m

if not args.no_from_pretrained:
    import tempfile

    from synapswap.torch import from_pretrained  # noqa: E402

    with tempfile.TemporaryDirectory() as d:
        base.save_pretrained(d)
        m = from_pretrained(d, vram_budget=budget, device="cuda")
        decode(m, 2, dev)
        rows["synapswap from_pretrained"] = decode(m, args.tokens, dev)
        m._synapswap_offload.remove()
        del m
        gc.collect()

bw = pinned_bandwidth()
bound = min(rows["all weights resident"], bw / max(1, weight_bytes - budget))
rows["bound (pinned PCIe)"] = bound
result = {
    "gpu": torch.cuda.get_device_name(0),
    "weight_bytes": weight_bytes,
    "budget_bytes": budget,
    "pinned_h2d_bytes_per_s": bw,
    "tokens_per_s": rows,
    "synapswap_of_bound": rows["synapswap"] / bound,
    "synapswap_over_accelerate": rows["synapswap"] / rows["accelerate dispatch_model"],
    "synapswap_stats": stats,
}
if args.json:
    print(json.dumps(result, indent=2))
print(f"{result['gpu']}: {weight_bytes / 2**30:.2f} GiB of bf16 weights, {args.budget_gib} GiB budget, "
      f"pinned H2D {bw / 1e9:.1f} GB/s")
print("| configuration | tokens/s |\n|---|---|")
for k, v in rows.items():
    print(f"| {k} | {v:.2f} |")
print(f"synapswap: {result['synapswap_of_bound']:.3f} of the bound, "
      f"{result['synapswap_over_accelerate']:.1f}x accelerate")
