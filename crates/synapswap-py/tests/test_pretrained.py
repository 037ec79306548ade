"""synapswap.torch.from_pretrained on the sim backend (device="cpu"): tiny random Hugging Face
models saved with save_pretrained, loaded without a copy of their weights in RAM, give the same
greedy tokens as transformers' own from_pretrained."""

import os

import pytest
import torch

transformers = pytest.importorskip("transformers")

from synapswap import model_tensors  # noqa: E402
from synapswap.torch import from_pretrained  # noqa: E402

TINY = dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)

CONFIGS = {
    "llama": lambda: transformers.LlamaConfig(**TINY, tie_word_embeddings=True),
    "mistral": lambda: transformers.MistralConfig(**TINY, sliding_window=None),
    "qwen2": lambda: transformers.Qwen2Config(**TINY),
    "gemma": lambda: transformers.GemmaConfig(**TINY, head_dim=16),
    "gpt2": lambda: transformers.GPT2Config(vocab_size=128, n_embd=64, n_layer=3, n_head=4,
                                            n_positions=64),
    # transformers 5 packs each layer's experts into 3-D parameters (gate_up_proj[expert]);
    # the files keep one tensor per expert (Mixtral's w1/w2/w3, Qwen2-MoE's gate/up/down).
    "mixtral": lambda: transformers.MixtralConfig(**TINY, num_local_experts=4,
                                                  num_experts_per_tok=2),
    "qwen2_moe": lambda: transformers.Qwen2MoeConfig(
        **TINY, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
        shared_expert_intermediate_size=64),
}
MOE = {"mixtral", "qwen2_moe"}


def load_plain(path, family, dtype=torch.float32):
    # from_pretrained computes experts one by one (experts_implementation="eager": indexing
    # gate_up_proj[expert] loads that expert alone); the plain model does the same arithmetic.
    kw = dict(experts_implementation="eager") if family in MOE else {}
    return transformers.AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **kw).eval()


def save(tmp_path, family, dtype, seed=0):
    torch.manual_seed(seed)
    config = CONFIGS[family]()
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=dtype)
    # Random weights of a realistic spread, so that greedy decoding is not degenerate.
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.5 if p.dim() > 1 else 0.1)
    model.save_pretrained(tmp_path)
    return tmp_path


def weight_bytes(model):
    seen, total = set(), 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel() * p.element_size()
    return total


def greedy(model, prompt, new, static=False):
    kw = dict(max_new_tokens=new, do_sample=False, pad_token_id=0)
    if static:
        kw["cache_implementation"] = "static"
    with torch.no_grad():
        return model.generate(prompt, **kw)


@pytest.mark.parametrize("family", sorted(CONFIGS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_greedy_generate_matches_transformers(tmp_path, family, dtype):
    path = save(tmp_path, family, dtype)
    plain = load_plain(path, family, dtype)
    prompt = torch.tensor([[1, 5, 9, 17, 33]])
    want = greedy(plain, prompt, 12)
    model = from_pretrained(path, vram_budget=weight_bytes(plain) // 2, device="cpu")
    handle = model._synapswap_offload
    got = greedy(model, prompt, 12)
    assert torch.equal(got, want), f"{family} {dtype}"
    stats = handle.stats()
    assert stats["evictions"] > 0, "half the model streamed"
    # Every weight came from the file, through the RAM tier.
    assert handle.engine.ram_tier()["pages_checked"] > 0
    handle.remove()
    for name, p in model.named_parameters():
        assert torch.equal(p, plain.get_parameter(name)), name
    assert torch.equal(greedy(model, prompt, 12), want)


@pytest.mark.parametrize("family", ["llama", "gpt2", "mixtral"])
def test_static_cache_matches_too(tmp_path, family):
    path = save(tmp_path, family, torch.float32, seed=1)
    plain = load_plain(path, family)
    prompt = torch.tensor([[3, 4, 5]])
    want = greedy(plain, prompt, 8, static=True)
    model = from_pretrained(path, vram_budget=weight_bytes(plain) // 3, device="cpu")
    assert torch.equal(greedy(model, prompt, 8, static=True), want)
    model._synapswap_offload.remove()


def rss_anon():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    pytest.skip("no /proc/self/status RssAnon here")


def test_no_copy_of_the_weights_in_ram(tmp_path):
    config = transformers.LlamaConfig(vocab_size=4096, hidden_size=512, intermediate_size=1536,
                                      num_hidden_layers=8, num_attention_heads=8,
                                      max_position_embeddings=64)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(tmp_path)
    size = sum(t["nbytes"] for t in model_tensors(str(tmp_path)))
    del model
    # Warm up: the modeling code's first import and build allocate on their own.
    from_pretrained(tmp_path, vram_budget=size, device="cpu")._synapswap_offload.remove()
    before = rss_anon()
    model = from_pretrained(tmp_path, vram_budget=size // 4, device="cpu")
    grown = rss_anon() - before
    # The sim arena is anonymous host memory: a quarter of the model, on top of the budget.
    arena = model._synapswap_offload.engine.vram_budget
    assert grown - arena < size / 10, f"anonymous memory grew {grown} for {size} bytes of weights"
    model._synapswap_offload.remove()


def test_auto_budget_reports_its_reserve(tmp_path):
    path = save(tmp_path, "llama", torch.float32)
    model = from_pretrained(path, device="cpu", max_context=32)
    b = model._synapswap_offload.budget
    assert b["max_context"] == 32
    # 2 x 3 layers x 2 KV heads x 16 x 32 positions x 4 bytes.
    assert b["kv_cache_bytes"] == 2 * 3 * 2 * 16 * 32 * 4
    assert b["reserve_bytes"] == b["kv_cache_bytes"] + b["activation_bytes"] + b["workspace_bytes"]
    # Plenty free here: the whole model.
    assert b["vram_budget_bytes"] == model._synapswap_offload.engine.vram_budget
    model._synapswap_offload.remove()


def test_auto_reserve_leaves_the_engines_free_vram_margin():
    # On CUDA the engine refuses a pool that leaves less than vram_margin(total) free (the WDDM
    # sysmem fallback), so "auto" must reserve at least that; off CUDA the 256 MiB stands.
    import synapswap
    from synapswap.torch import _reserve

    config = transformers.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                      num_attention_heads=4, vocab_size=100)
    total = 141 << 30
    assert synapswap.vram_margin(total) == total // 64
    assert synapswap.vram_margin(8 << 30) == 256 << 20
    assert _reserve(config, torch.float16, 32, device_total=total)["workspace_bytes"] == total // 64
    assert _reserve(config, torch.float16, 32)["workspace_bytes"] == 256 << 20


def test_bad_input_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        from_pretrained(tmp_path / "nothing", vram_budget="1MiB", device="cpu")
    path = save(tmp_path, "llama", torch.bfloat16)
    with pytest.raises(ValueError, match="converted copy"):
        from_pretrained(path, vram_budget="1MiB", device="cpu", dtype=torch.float32)
    with pytest.raises(ValueError, match="smaller than the largest tensor"):
        from_pretrained(path, vram_budget=1024, device="cpu")
    with pytest.raises(ValueError, match="leaves nothing for weights"):
        from_pretrained(path, device="cpu", max_context=1 << 40)


@pytest.mark.parametrize("family", sorted(MOE))
def test_packed_experts_are_bound_in_place_one_block_per_expert(tmp_path, family):
    # The file keeps one tensor per expert; the model packs them into 3-D parameters. Each
    # expert's slice is bound to the file's bytes where they lie (no copy in RAM): Mixtral's
    # gate_up_proj[e] is w1 and w3 of expert e, two ranges of the file, so two blocks,
    # assembled on the device; Qwen2-MoE's gate and up projections lie side by side, so one.
    path = save(tmp_path, family, torch.float32)
    names = {t["name"] for t in model_tensors(str(path))}
    model = from_pretrained(path, vram_budget="1GiB", device="cpu")
    handle = model._synapswap_offload
    packed = {p.name: p for p in handle._packed}
    gate_up = packed["model.layers.0.mlp.experts.gate_up_proj"]
    assert len(gate_up.experts) == 4
    pieces = [len(slots) for slots in gate_up.experts]
    assert pieces == ([2] * 4 if family == "mixtral" else [1] * 4)
    for slots in gate_up.experts:
        for s in slots:
            # Each piece is a view of a mapped file (no anonymous copy), named as in the file.
            assert handle._names[s.block] in names
            assert not s.host.untyped_storage().resizable()
    assert model.model.layers[0].mlp.experts.gate_up_proj.device.type == "cpu"
    handle.remove()
    plain = load_plain(path, family)
    for name, p in model.named_parameters():
        assert torch.equal(p, plain.get_parameter(name)), name


def test_indexing_an_expert_loads_that_expert_alone(tmp_path):
    # Everything fits: each block is copied at most once. One token through two layers of 8
    # experts, top-2, loads the other weights and at most 2 experts a layer, not all 8.
    torch.manual_seed(0)
    config = transformers.MixtralConfig(**dict(TINY, num_hidden_layers=2), num_local_experts=8,
                                        num_experts_per_tok=2)
    model = transformers.AutoModelForCausalLM.from_config(config)
    model.save_pretrained(tmp_path)
    model = from_pretrained(tmp_path, vram_budget="64MiB", device="cpu")
    handle = model._synapswap_offload
    expert = sum(s.nbytes for s in handle._packed[0].experts[0])
    expert += sum(s.nbytes for s in handle._packed[1].experts[0])  # its down_proj
    experts = 8 * expert * 2  # every expert of both layers
    # Every other block: the dense weights, the routers, the rotary embedding's buffer.
    others = sum({s.block: s.nbytes for s in handle._slots}.values())
    with torch.no_grad():
        model(torch.tensor([[7]]))
    moved = handle.stats()["bytes_h2d"]
    assert moved <= others + 2 * 2 * expert, (moved, others, experts)
    assert moved >= others + 2 * expert  # an expert a layer at least
    handle.remove()


def _vm_flags(addr):
    """The VmFlags of the mapping holding ``addr`` (/proc/self/smaps), or None."""
    with open("/proc/self/smaps") as f:
        current = False
        for line in f:
            head = line.split()
            if head and "-" in head[0] and len(head) >= 5:
                lo, hi = (int(x, 16) for x in head[0].split("-"))
                current = lo <= addr < hi
            elif current and line.startswith("VmFlags:"):
                return line.split()[1:]
    return None


@pytest.mark.skipif(not os.path.exists("/proc/self/smaps"), reason="Linux: /proc/self/smaps")
def test_files_are_mapped_private_and_unreserved(tmp_path):
    # The mapping from_pretrained binds parameters to: private (a write after remove() copies
    # the page, never the file) and, on Linux, MAP_NORESERVE (the kernel's overcommit limit
    # refuses a private writable mapping larger than RAM otherwise: a 28 GiB model on 24 GiB,
    # BENCHMARKS.md "Models larger than RAM"). The flag ("nr") is seen in /proc/self/smaps.
    import platform

    from synapswap.torch import _map_file

    path = tmp_path / "f.bin"
    path.write_bytes(bytes(range(256)) * 64)
    m = _map_file(path)
    t = torch.frombuffer(m, dtype=torch.uint8)
    assert t[:4].tolist() == [0, 1, 2, 3]
    t[0] = 200
    assert path.read_bytes()[0] == 0, "the file is never written"
    known = platform.machine() in ("x86_64", "aarch64", "arm64")
    if known:
        assert "nr" in (_vm_flags(t.data_ptr()) or []), _vm_flags(t.data_ptr())
    (tmp_path / "empty.bin").write_bytes(b"")
    with pytest.raises(ValueError, match="empty"):
        _map_file(tmp_path / "empty.bin")
    # And the parameters from_pretrained binds lie in such a mapping, before and after remove().
    model = from_pretrained(save(tmp_path / "m", "llama", torch.float32), vram_budget="1MiB",
                            device="cpu")
    model._synapswap_offload.remove()
    p = model.model.layers[0].mlp.up_proj.weight
    flags = _vm_flags(p.data_ptr())
    assert flags is not None and "mr" in flags and "sh" not in flags, flags
    if known:
        assert "nr" in flags, flags
