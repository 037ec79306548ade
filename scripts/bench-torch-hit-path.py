#!/usr/bin/env python3
"""The cost synapswap.torch adds to an operation whose weights are already on the device (the hit
path), issue 17: 64 x (Linear(64, 64) + GELU), batch 1, one torch thread, every weight resident
(the budget holds the whole model), on the sim backend, against the plain model, side by side in
one run (rounds alternate). With accelerate installed, its cpu_offload hooks too.

    target/pyenv/bin/python scripts/bench-torch-hit-path.py [--rounds 7] [--iters 200]

Prints a Markdown table: median time per forward, the ratio to the plain model, and the time
added per weight op (per Linear: its weight and bias are one operation). Nothing here is a timed
test; BENCHMARKS.md quotes this script."""

import argparse
import statistics
import time

import torch
import torch.nn as nn

from synapswap.torch import offload


def model():
    torch.manual_seed(0)
    layers = []
    for _ in range(64):
        layers += [nn.Linear(64, 64), nn.GELU()]
    return nn.Sequential(*layers).eval()


def per_forward(m, x, iters):
    with torch.no_grad():
        t = time.perf_counter()
        for _ in range(iters):
            m(x)
        return (time.perf_counter() - t) / iters


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--iters", type=int, default=200)
    args = ap.parse_args()
    torch.set_num_threads(1)
    x = torch.randn(1, 64)
    plain = model()
    ours = model()
    handle = offload(ours, vram_budget=sum(p.numel() * 4 for p in ours.parameters()) * 2,
                     device="cpu")
    with torch.no_grad():
        assert torch.equal(plain(x), ours(x)), "offloaded output differs"
    runs = {"plain": plain, "synapswap": ours}
    try:
        from accelerate import cpu_offload

        acc = model()
        cpu_offload(acc, execution_device=torch.device("cpu"))
        runs["accelerate cpu_offload"] = acc
    except ImportError:
        pass
    for m in runs.values():
        per_forward(m, x, 20)  # warm-up: the first forward declares the schedule
    times = {k: [] for k in runs}
    for _ in range(args.rounds):
        for k, m in runs.items():
            times[k].append(per_forward(m, x, args.iters))
    stats = handle.stats()
    base = statistics.median(times["plain"])
    print(f"64 x (Linear(64, 64) + GELU), batch 1, 1 thread, all resident; median of "
          f"{args.rounds} rounds of {args.iters} forwards; hit rate {stats['hit_rate']:.3f}, "
          f"{stats['loads']} loads in all.")
    print()
    print("| model | per forward, us | of plain | added per weight op, us |")
    print("|---|---|---|---|")
    for k in runs:
        t = statistics.median(times[k])
        print(f"| {k} | {t * 1e6:.0f} | {t / base:.2f}x | {(t - base) / 64 * 1e6:.1f} |")
    handle.remove()


if __name__ == "__main__":
    main()
