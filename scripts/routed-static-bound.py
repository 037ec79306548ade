#!/usr/bin/env python3
"""What the best fixed set of resident experts can do on `mixtral-8x7b-routed` (issue 18), for
BENCHMARKS.md: a Monte Carlo estimate, not a measurement, and not of SynapSwap.

    python3 scripts/routed-static-bound.py [--slots 38] [--passes 4000] [--cache C]

The preset's routing (README, "Routed models"): 32 layers of 8 experts, 2 a token, Zipf 1.0
popularity rotated by 5 a layer, each pick repeating one of the previous token's with
probability 0.3 (the rules of `routing.rs`, drawn here with Python's own generator). It
estimates each expert's rate of use, keeps the SLOTS most used (knowing the true rates, as no
online policy can), and prints the expert loads and GB a token left: what any policy that keeps
a fixed set moves. 38 slots: the experts the engine's keep plan held on that preset's 16 GiB in
a run traced while issue 18 was built.

`--cache C` (2026-12-03): the same slots split, SLOTS - C kept for good and C as a cache of the
most recently used of the other experts (LRU), on the drawn trace: what keeping the repeats
beside a smaller fixed set would move."""

import argparse
import random

EXPERT_BYTES = 3 * 4096 * 14336 * 2  # gate, up and down of one Mixtral expert, fp16


def draw(weights, prev, repeat, k):
    chosen = []
    while len(chosen) < k:
        again = [e for e in (prev or []) if e not in chosen]
        if again and random.random() < repeat:
            chosen.append(random.choice(again))
            continue
        cand = [e for e in range(len(weights)) if e not in chosen]
        x = random.random() * sum(weights[e] for e in cand)
        for e in cand:
            if x < weights[e]:
                chosen.append(e)
                break
            x -= weights[e]
        else:
            chosen.append(cand[-1])
    return chosen


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--slots", type=int, default=38)
    ap.add_argument("--passes", type=int, default=4000)
    ap.add_argument("--cache", type=int, default=0)
    a = ap.parse_args()
    random.seed(1)
    n, k, layers, repeat = 8, 2, 32, 0.3
    if not 0 <= a.cache <= a.slots:
        ap.error("--cache must be between 0 and --slots")
    # trace[t][layer]: the experts token t uses at that layer.
    trace = [[None] * layers for _ in range(a.passes)]
    rates = {}
    for layer in range(layers):
        weights = [1 / (((e + n - (layer * 5) % n) % n) + 1) for e in range(n)]
        prev = None
        for t in range(a.passes):
            prev = draw(weights, prev, repeat, k)
            trace[t][layer] = prev
            for e in prev:
                rates[(layer, e)] = rates.get((layer, e), 0) + 1 / a.passes
    by_rate = sorted(rates, key=lambda x: -rates[x])
    kept = set(by_rate[: a.slots - a.cache])
    cache, loads = [], 0  # LRU of at most a.cache experts, most recent last
    for row in trace:
        for layer, chosen in enumerate(row):
            for e in chosen:
                x = (layer, e)
                if x in kept:
                    continue
                if x in cache:
                    cache.remove(x)
                else:
                    loads += 1
                cache.append(x)
                if len(cache) > a.cache:
                    cache.pop(0)
    hits = layers * k - loads / a.passes
    misses = layers * k - hits
    print(f"{a.slots - a.cache} experts kept for good, {a.cache} cached (LRU): {hits:.2f} of "
          f"{layers * k} expert uses a token hit, {misses:.2f} loads, "
          f"{misses * EXPERT_BYTES / 1e9:.2f} GB a token")


if __name__ == "__main__":
    main()
