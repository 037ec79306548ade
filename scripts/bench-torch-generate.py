#!/usr/bin/env python3
"""End to end on the sim backend (issue 17): greedy `generate()` of an offloaded bf16 Llama
against the plain model, side by side in one run.

    target/pyenv/bin/python scripts/bench-torch-generate.py [--tokens 24] [--rounds 3]
        [--links 2GB/s,25GB/s] [--trace]

The model: a random bf16 Llama (hidden 512, 8 layers, tied embeddings, vocab 32000), offloaded
with `synapswap.torch.offload(model, vram_budget=half its bytes, device="cpu",
sim_h2d=LINK)` for each LINK, and a deep copy of it left plain. Each round times the plain
model's `generate()` of TOKENS new tokens (greedy, a 16-token prompt) and then the offloaded
one's, after one untimed warm-up of each (the first forward records the order it declares);
medians over the rounds. The bound is the larger of the plain time and the bytes the engine
copied during the timed `generate()` (its `bytes_h2d`) over the sim link's rate: the offloaded
model cannot be faster than either. Also reports the keep plan the engine settled on (kept MiB:
the blocks it holds for good; the rest streams through what is left).

The budget floor is a tighter bound, from what the budget lets the link do. In each pass, from
the first decoder layer's start (t_g) to the `lm_head`'s start (t_e, the pass's last use of a
weight), the pass uses M' bytes: every byte of the model but those used only before t_g (here
the rotary buffer; an untied embedding would be another); at most the budget's B bytes are on the device at t_g, so at least
M' - B bytes cross the link between t_g and t_e. From t_e to the next pass's t_g (the `lm_head`,
`generate()`'s own work, the embedding) no copy serves the pass that ends, and the next one's
copies have at most the room the pass left. So a pass takes at least its gap plus the larger
of its layers' compute and (M' - B) over the link's rate: the floor sums that over the passes,
with the gaps and the layers' times measured on the plain model (a separate untimed run per
round, timed by forward hooks). It leaves out the sim's 10 us a copy. The CPU columns are the
calling thread's CPU time in `generate()` (`time.thread_time()`: a wait that blocks is not
counted), the compute's own cost beside the wall time. Prints a Markdown table;
BENCHMARKS.md quotes it. Also checks that both models give the same tokens. Nothing here is a
timed test.

`--trace`: after the table, one more `generate()` per link on an engine built with `trace=True`,
reporting from its copy timeline how long the link was busy and idle, and how much of the idle
time fell in the gaps between passes (from the `lm_head`'s start to the next first layer's)."""

import argparse
import contextlib
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


def timed_generate(model, prompt, tokens, cpu=None):
    """Seconds of `generate()` (and its tokens); `cpu`, a list, gets the calling thread's CPU
    seconds in it (time blocked in a wait is not CPU time)."""
    t, c = time.perf_counter(), time.thread_time()
    with torch.no_grad():
        out = model.generate(prompt, max_new_tokens=tokens, min_new_tokens=tokens,
                             do_sample=False)
    if cpu is not None:
        cpu.append(time.thread_time() - c)
    return time.perf_counter() - t, out


@contextlib.contextmanager
def pass_marks(model, clock):
    """Within the block, `clock()` at each pass's first decoder layer's start and at its
    `lm_head`'s start, as the list it yields: [(t_g, t_e), ...] once the block ends (checked to
    alternate, g first)."""
    marks = []
    hooks = [
        model.model.layers[0].register_forward_pre_hook(lambda *_: marks.append(("g", clock()))),
        model.lm_head.register_forward_pre_hook(lambda *_: marks.append(("e", clock()))),
    ]
    passes = []
    try:
        yield passes
    finally:
        for h in hooks:
            h.remove()
    kinds = [k for k, _ in marks]
    if not marks or kinds != ["g", "e"] * (len(marks) // 2):
        raise RuntimeError(f"unexpected pass structure: {kinds[:8]}")
    passes += [(marks[i][1], marks[i + 1][1]) for i in range(0, len(marks), 2)]


def must_copy_bytes(plain, size, budget):
    """M' - B (module docs): the bytes each pass must copy after its first layer starts."""
    early = sum(b.numel() * b.element_size() for b in plain.model.rotary_emb.buffers())
    if plain.model.embed_tokens.weight.data_ptr() != plain.lm_head.weight.data_ptr():
        w = plain.model.embed_tokens.weight
        early += w.numel() * w.element_size()
    return max(0, size - early - budget)


def budget_floor(plain, prompt, tokens, must_copy_s, plain_s):
    """The budget floor (module docs) of one `generate()` of `plain`, on a run timed by forward
    hooks whose compute times are scaled to `plain_s` (the unhooked run's time in the same round:
    these machines are noisy, and one run's time is the other's but for noise), with
    `must_copy_s` the pass's M' - B over the link: seconds."""
    with pass_marks(plain, time.perf_counter) as passes:
        t0 = time.perf_counter()
        timed_generate(plain, prompt, tokens)
        t1 = time.perf_counter()
    k = plain_s / (t1 - t0)
    floor, prev = 0.0, t0
    for g, e in passes:
        floor += (g - prev) * k + max((e - g) * k, must_copy_s)
        prev = e
    return floor + (t1 - prev) * k


def traced(plain, prompt, tokens, budget, link):
    """One `generate()` of a fresh offloaded copy of `plain` on a traced engine (after a warm-up):
    (wall s, link busy s, link idle s, idle s in the gaps between passes)."""
    model = copy.deepcopy(plain)
    handle = offload(model, vram_budget=budget, device="cpu", sim_h2d=link, trace=True)
    engine = handle.engine
    try:
        timed_generate(model, prompt, tokens)
        time.sleep(0.1)  # the warm-up's copies in flight complete, and are taken with it
        engine.take_trace()
        with pass_marks(model, engine.now_s) as passes:
            t0 = engine.now_s()
            timed_generate(model, prompt, tokens)
            t1 = engine.now_s()
        time.sleep(0.1)  # a copy still in flight at t1 is traced once it completes
        spans = [x for x in engine.take_trace() if x["track"] == "copy"]
    finally:
        handle.remove()
    # Idle intervals of the link within [t0, t1] (copies run one at a time, in order), each
    # copy clipped to that window.
    idle, cur = [], t0
    for x in sorted(spans, key=lambda x: x["start_s"]):
        start, end = max(x["start_s"], t0), min(x["start_s"] + x["dur_s"], t1)
        if end <= start:
            continue
        if start > cur:
            idle.append((cur, start))
        cur = max(cur, end)
    if cur < t1:
        idle.append((cur, t1))
    # From each pass's lm_head to the next pass's first layer.
    gaps = [(e, g) for (_, e), (g, _) in zip(passes, passes[1:])]
    overlap = lambda a, b: sum(max(0.0, min(b, e) - max(a, s)) for s, e in gaps)
    idle_s = sum(b - a for a, b in idle if b > a)
    in_gaps = sum(overlap(a, b) for a, b in idle if b > a)
    return t1 - t0, (t1 - t0) - idle_s, idle_s, in_gaps


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=24)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--links", default="2GB/s,25GB/s")
    ap.add_argument("--trace", action="store_true")
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
          "rate s | bound s | of bound | budget floor s | of floor | stall s | CPU s, plain / "
          "synapswap | kept MiB | same tokens |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    must_copy = must_copy_bytes(plain, size, size // 2)
    for link in a.links.split(","):
        model = copy.deepcopy(plain)
        handle = offload(model, vram_budget=size // 2, device="cpu", sim_h2d=link)
        rate = handle.engine.sim_h2d_bytes_per_s
        timed_generate(plain, prompt, a.tokens)
        timed_generate(model, prompt, a.tokens)
        ps, ss, copied, stalls, floors, same = [], [], [], [], [], True
        pc, sc = [], []  # the calling thread's CPU seconds
        for _ in range(a.rounds):
            t, want = timed_generate(plain, prompt, a.tokens, pc)
            ps.append(t)
            if rate:
                floors.append(budget_floor(plain, prompt, a.tokens, must_copy / rate, t))
            before = handle.stats()
            t, got = timed_generate(model, prompt, a.tokens, sc)
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
        floor = statistics.median(floors) if rate else p
        print(f"| {link} | {p:.3f} | {s:.3f} | {s / p:.2f}x | {c / 2**20:.1f} | {copy_s:.3f} | "
              f"{bound:.3f} | {s / bound:.2f}x | {floor:.3f} | {s / floor:.2f}x | "
              f"{statistics.median(stalls):.3f} | {statistics.median(pc):.3f} / "
              f"{statistics.median(sc):.3f} | {kept / 2**20:.1f} | "
              f"{'yes' if same else 'NO'} |")
    if a.trace:
        print()
        for link in a.links.split(","):
            wall, busy, idle, in_gaps = traced(plain, prompt, a.tokens, size // 2, link)
            print(f"traced, {link}: {wall:.3f} s; the link busy {busy:.3f} s, idle {idle:.3f} s, "
                  f"{in_gaps:.3f} s of it between passes")


if __name__ == "__main__":
    main()
