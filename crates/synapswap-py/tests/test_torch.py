"""synapswap.torch.offload on the sim backend (device="cpu"): outputs bit-identical to the plain
model, with evictions, on a small transformer and on a routed mixture of experts."""

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from synapswap.torch import offload
import synapswap.torch as torch_mod


class Block(nn.Module):
    def __init__(self, d, heads, ff):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.norm2 = nn.LayerNorm(d)
        self.up = nn.Linear(d, ff)
        self.down = nn.Linear(ff, d)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).chunk(3, dim=-1)
        split = lambda z: z.view(b, t, self.heads, d // self.heads).transpose(1, 2)
        att = (split(q) @ split(k).transpose(-1, -2)) / (d // self.heads) ** 0.5
        y = (att.softmax(-1) @ split(v)).transpose(1, 2).reshape(b, t, d)
        x = x + self.proj(y)
        return x + self.down(F.gelu(self.up(self.norm2(x))))


class TinyLM(nn.Module):
    def __init__(self, vocab=200, d=64, layers=6, heads=4, ff=256):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.blocks = nn.ModuleList(Block(d, heads, ff) for _ in range(layers))
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab, bias=False)
        self.head.weight = self.embed.weight  # tied weights: one block for both

    def forward(self, ids):
        x = self.embed(ids)
        for blk in self.blocks:
            x = blk(x)
        return self.head(self.norm(x))


class MoE(nn.Module):
    """Each token goes to its top-1 expert: which experts run depends on the data."""

    def __init__(self, d=48, experts=6, ff=192):
        super().__init__()
        self.inp = nn.Linear(16, d)
        self.router = nn.Linear(d, experts)
        self.experts = nn.ModuleList(
            nn.Sequential(nn.Linear(d, ff), nn.GELU(), nn.Linear(ff, d)) for _ in range(experts)
        )
        self.bn = nn.BatchNorm1d(d)
        self.out = nn.Linear(d, 4)

    def forward(self, x):
        h = self.inp(x)
        choice = self.router(h).argmax(-1)
        y = torch.zeros_like(h)
        for e, expert in enumerate(self.experts):
            mask = choice == e
            if mask.any():
                y[mask] = expert(h[mask])
        return self.out(self.bn(h + y))


def nbytes(model):
    return sum(p.numel() * p.element_size() for p in model.parameters())


class CountUses(TorchFunctionMode):
    """Counts the uses of a model's tensors the way offload waits for them: each operation once
    per distinct parameter or buffer it takes."""

    def __init__(self, model):
        super().__init__()
        self.ids = {id(t) for t in model.parameters()} | {id(t) for t in model.buffers()}
        self.uses = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        seen = set()

        def walk(v):
            if isinstance(v, (list, tuple)):
                for x in v:
                    walk(x)
            elif id(v) in self.ids:
                seen.add(id(v))

        walk(args)
        walk(list(kwargs.values()))
        self.uses += len(seen)
        return func(*args, **kwargs)


def test_transformer_is_bit_identical_through_a_third_of_its_size():
    torch.manual_seed(0)
    model = TinyLM().eval()
    plain = copy.deepcopy(model)
    inputs = [torch.randint(0, 200, (2, 24), generator=torch.Generator().manual_seed(i)) for i in range(4)]
    with torch.no_grad():
        want = [plain(x) for x in inputs]
    count = CountUses(plain)
    with torch.no_grad(), count:
        plain(inputs[0])
    uses = count.uses  # per forward
    handle = offload(model, nbytes(model) // 3 - 1, device="cpu")
    with torch.no_grad():
        got = [model(inputs[0])]
        cold = handle.stats()
        got += [model(x) for x in inputs[1:]]
    for w, g in zip(want, got):
        assert torch.equal(w, g)
    s = handle.stats()
    assert s["evictions"] > 0
    assert s["peak_device_bytes"] <= s["vram_budget_bytes"] < nbytes(model) // 3
    assert s["bytes_h2d"] > nbytes(model)  # weights streamed more than once
    # One wait per use: the DLPack export of a waited-for block is not a second wait.
    assert cold["waits"] == uses and s["waits"] == len(inputs) * uses
    # The first forward has no recorded order to prefetch from: nearly every use misses (a
    # count with a second, always-hitting wait per use could not go below 0.5).
    assert cold["hit_rate"] < 0.25
    # Later forwards are prefetched from the recorded order (measured: 0.96).
    warm_hits = s["hits"] - cold["hits"]
    assert warm_hits / (s["waits"] - cold["waits"]) > 0.6
    assert set(s) >= {"bytes_h2d", "hit_rate", "stall_s", "evictions", "peak_device_bytes", "vram_budget_bytes"}
    handle.remove()
    assert model.embed.weight.device.type == "cpu" and model.head.weight is model.embed.weight
    with torch.no_grad():
        assert torch.equal(model(inputs[0]), want[0])


def test_routed_experts_stay_exact_as_the_order_changes():
    torch.manual_seed(1)
    model = MoE().eval()
    plain = copy.deepcopy(model)
    handle = offload(model, nbytes(model) // 3, device="cpu")
    with torch.no_grad():
        for i in range(8):
            x = torch.randn(5, 16, generator=torch.Generator().manual_seed(100 + i))
            assert torch.equal(model(x), plain(x))
    s = handle.stats()
    assert s["evictions"] > 0
    handle.remove()


def test_buffers_are_written_back():
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(8, 8), nn.BatchNorm1d(8), nn.Linear(8, 8))
    plain = copy.deepcopy(model)
    model.train()
    plain.train()
    handle = offload(model, 1024, device="cpu")
    x = torch.randn(16, 8)
    with torch.no_grad():
        for _ in range(3):
            assert torch.equal(model(x), plain(x))
    handle.remove()
    assert torch.equal(model[1].running_mean, plain[1].running_mean)
    assert model[1].num_batches_tracked.item() == 3


def test_tensors_of_one_storage_are_cut_from_one_registration():
    # Every weight and bias a view into one flat storage (as a model loaded from one file is):
    # they share pages, so the storage is registered once and each tensor is a part of it.
    torch.manual_seed(3)
    model = nn.Sequential(*[nn.Linear(64, 64) for _ in range(4)])
    flat = torch.randn(4 * (64 * 64 + 64))
    off = 0
    for lin in model:
        lin.weight = nn.Parameter(flat[off:off + 64 * 64].view(64, 64))
        off += 64 * 64
        lin.bias = nn.Parameter(flat[off:off + 64])
        off += 64
    plain = copy.deepcopy(model)
    handle = offload(model, 40 * 1024, device="cpu")
    x = torch.randn(2, 64)
    with torch.no_grad():
        for _ in range(3):
            assert torch.equal(model(x), plain(x))
    stats = handle.stats()
    assert stats["evictions"] > 0, "the weights streamed through the budget"
    handle.remove()


def _write_safetensors(path, state):
    """A safetensors file of a float32 state_dict (written by hand: no safetensors package)."""
    import json
    import struct

    header, blobs, off = {}, [], 0
    for name, t in state.items():
        b = t.detach().contiguous().numpy().tobytes()
        header[name] = {"dtype": "F32", "shape": list(t.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def test_save_order_writes_the_forward_order_that_run_model_follows(tmp_path):
    import json
    import os
    import subprocess

    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 32), nn.LayerNorm(32))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    handle = offload(model, 8 * 1024, device="cpu")
    with pytest.raises(RuntimeError, match="no forward"):
        handle.save_order(tmp_path / "none.json")
    with torch.no_grad():
        model(torch.randn(2, 32))
    order = tmp_path / "order.json"
    handle.save_order(order)
    handle.remove()
    steps = json.loads(order.read_text())["steps"]
    # One step per operation, in the order the forward ran them, named as in the state_dict.
    assert steps == [["0.weight", "0.bias"], ["2.weight", "2.bias"], ["3.weight", "3.bias"]]
    binary = os.path.join(os.path.dirname(__file__), "../../../target/release/synapswap")
    if not os.path.exists(binary):
        pytest.skip("target/release/synapswap is not built (scripts/test.sh builds it first)")
    model_file = tmp_path / "model.safetensors"
    _write_safetensors(model_file, state)
    out = subprocess.run(
        [binary, "run", "--model", str(model_file), "--order", str(order), "--json", "--tokens", "2"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["integrity"]["mismatches"] == 0
    assert report["integrity"]["verified_blocks"] == 3 * 6


def test_bad_input_leaves_the_model_as_it_was():
    model = TinyLM(layers=2).eval()
    before = {n: (p, p.data_ptr()) for n, p in model.named_parameters()}
    with pytest.raises(ValueError, match="smaller than the largest"):
        offload(model, 1000, device="cpu")
    with pytest.raises(TypeError):
        offload("not a model", "1MiB", device="cpu")
    meta = TinyLM(layers=1).to("meta")
    with pytest.raises(ValueError, match="CPU memory"):
        offload(meta, "1MiB", device="cpu")
    assert {n: (p, p.data_ptr()) for n, p in model.named_parameters()} == before
    handle = offload(model, "1MiB", device="cpu")
    with pytest.raises(RuntimeError, match="already offloaded"):
        offload(model, "1MiB", device="cpu")
    handle.remove()
    assert {n: (p, p.data_ptr()) for n, p in model.named_parameters()} == before


class ReturnsItsWeight(nn.Module):
    """A module whose output is a view of its own weight (an alias of device memory)."""

    def __init__(self, n):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n, n))

    def forward(self, x):
        return self.weight.t()


class UsesChildWeight(nn.Module):
    """A parent that reads its child's weight directly (the child's forward never runs), as
    nn.MultiheadAttention reads out_proj.weight."""

    def __init__(self, n):
        super().__init__()
        self.child = nn.Linear(n, n)

    def forward(self, x):
        return F.linear(x, self.child.weight, self.child.bias)


class Raises(nn.Module):
    def __init__(self, n):
        super().__init__()
        self.lin = nn.Linear(n, n)

    def forward(self, x):
        self.lin(x)
        raise KeyError("inside forward")


class AliasModel(nn.Module):
    def __init__(self, n, layers):
        super().__init__()
        self.first = ReturnsItsWeight(n)
        self.layers = nn.ModuleList(nn.Linear(n, n) for _ in range(layers))

    def forward(self, x):
        w = self.first(x)  # a view of first.weight's device copy
        for layer in self.layers:
            x = layer(x)
        return w, x


def test_an_output_that_views_a_weight_keeps_it_on_the_device():
    torch.manual_seed(0)
    n = 64
    model = AliasModel(n, 6)
    plain = copy.deepcopy(model)
    # Room for the aliased weight and two layers: the others evict each other to run.
    handle = offload(model, vram_budget=3 * (n * n * 4 + 256), device="cpu")
    x = torch.randn(1, n)
    with torch.no_grad():
        want_w, want_x = plain(x)
        kept, _ = model(x)
        for _ in range(3):
            w, y = model(x)
            assert torch.equal(y, want_x)
        assert handle.stats()["evictions"] > 0
        # The layers streamed through the budget meanwhile; the first view still reads the
        # weight (its block stayed held), as does the last.
        assert torch.equal(kept, want_w)
        assert torch.equal(w, want_w)
    del kept, w
    handle.remove()


def test_a_weight_used_outside_its_module_forward_goes_op_by_op():
    torch.manual_seed(0)
    model = nn.Sequential(UsesChildWeight(32), nn.Linear(32, 32), UsesChildWeight(32))
    plain = copy.deepcopy(model)
    x = torch.randn(2, 32)
    with torch.no_grad():
        want = plain(x)
        offload(model, vram_budget=2 * 33 * 32 * 4 + 4096, device="cpu")
        for _ in range(3):
            assert torch.equal(model(x), want)


def test_an_exception_in_forward_leaves_nothing_active():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 16), Raises(16))
    handle = offload(model, vram_budget="1MiB", device="cpu")
    with pytest.raises(KeyError):
        with torch.no_grad():
            model(torch.randn(1, 16))
    assert handle._depth == 0
    # Outside a forward the placeholders compute as plain meta tensors again, and hold nothing
    # (their device is the engine's, where inputs go).
    assert model[0].weight.device.type == "cpu"
    assert (model[0].weight + 1).device.type == "meta"
    stats = handle.stats()
    assert stats["device_used_bytes"] <= stats["vram_budget_bytes"]
    handle.remove()
    with torch.no_grad():
        model[0](torch.randn(1, 16))  # plain again


class ReadsMetadata(nn.Module):
    """Reads its sibling's weight's metadata inside a forward (as transformers reads
    ``embed_tokens.weight.device``)."""

    def __init__(self, other):
        super().__init__()
        self.other = [other]  # not a submodule
        self.seen = None

    def forward(self, x):
        w = self.other[0].weight
        self.seen = (w.device, w.is_cuda, w.stride(), w.data_ptr(), w.dtype, w.shape, w.dim())
        return x


def test_metadata_never_loads_a_block():
    torch.manual_seed(0)
    lin = nn.Linear(32, 32)
    model = nn.Sequential(ReadsMetadata(lin), lin)
    handle = offload(model, vram_budget="1MiB", device="cpu")
    with torch.no_grad():
        model(torch.randn(1, 32))
        # Not even a use of a resident block: nothing is waited for.
        loads = handle.stats()["loads"], handle.stats()["waits"]
        model[0](torch.randn(1, 32))  # outside the model's forward
        handle._begin()  # inside one, but lin's forward is not running
        model[0](torch.randn(1, 32))
        handle._end(False)
    assert (handle.stats()["loads"], handle.stats()["waits"]) == loads
    device, is_cuda, stride, ptr, dtype, shape, dim = model[0].seen
    assert (device.type, is_cuda, stride, dtype, tuple(shape), dim) == (
        "cpu", False, (32, 1), torch.float32, (32, 32), 2)
    handle.remove()


def test_a_forward_with_grad_enabled_warns_that_no_gradient_flows():
    model = nn.Sequential(nn.Linear(8, 8))
    handle = offload(model, vram_budget="1MiB", device="cpu")
    with pytest.warns(UserWarning, match="get no gradient"):
        model(torch.randn(1, 8))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with torch.no_grad():
            model(torch.randn(1, 8))  # no warning under no_grad
    handle.remove()


def test_a_model_dropped_without_remove_stops_its_engine_first():
    import gc

    model = nn.Sequential(nn.Linear(8, 8), nn.BatchNorm1d(8), nn.Linear(8, 8))
    model.train()  # its buffers change: dirty blocks to write back into CPU memory
    handle = offload(model, 1024, device="cpu")
    with torch.no_grad():
        model(torch.randn(16, 8))
    engine = handle.engine
    del model, handle
    gc.collect()
    # The engine stopped before the tensors holding its host copies were freed (a write-back
    # into freed memory corrupted the heap): it takes nothing more.
    with pytest.raises(RuntimeError, match="shut down"):
        engine.alloc(16)


class NestedAlias(nn.Module):
    def __init__(self, n):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n, n))

    def forward(self, x):
        return x, [self.weight.t()[:2]], {"w": self.weight[0]}


class ReplacesBuffer(nn.Module):
    def __init__(self, n, shape=None):
        super().__init__()
        self.register_buffer("scale", torch.ones(n))
        self.shape = shape

    def forward(self, x):
        self.scale = torch.full(self.shape or self.scale.shape, 2.0)
        return x * self.scale


def test_views_nested_in_outputs_are_kept_and_remove_waits_for_them():
    torch.manual_seed(0)
    n = 32
    model = nn.Sequential(NestedAlias(n))
    want = model[0].weight.detach().clone()
    handle = offload(model, vram_budget="1MiB", device="cpu")
    with torch.no_grad():
        x, (rows,), d = model(torch.zeros(1, n))
    assert torch.equal(rows, want.t()[:2]) and torch.equal(d["w"], want[0])
    # A kept view holds its block: remove() says so and changes nothing.
    with pytest.raises(RuntimeError, match="still viewed"):
        handle.remove()
    assert type(model[0].weight).__name__ == "_OffloadedParameter"
    del rows, d
    handle.remove()
    assert torch.equal(model[0].weight, want)


def test_a_buffer_replaced_in_forward_is_kept_or_refused():
    model = nn.Sequential(ReplacesBuffer(4))
    handle = offload(model, vram_budget="1MiB", device="cpu")
    with torch.no_grad():
        assert torch.equal(model(torch.ones(1, 4)), torch.full((1, 4), 2.0))
    handle.remove()
    assert torch.equal(model[0].scale, torch.full((4,), 2.0))
    model = nn.Sequential(ReplacesBuffer(4, shape=(8,)))
    handle = offload(model, vram_budget="1MiB", device="cpu")
    with pytest.raises(RuntimeError, match="another shape or dtype"):
        with torch.no_grad():
            model(torch.ones(1, 8))
    handle.remove()


def test_a_submodule_called_on_its_own_computes_on_the_device():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8))
    plain = copy.deepcopy(model)
    handle = offload(model, vram_budget="1MiB", device="cpu")
    x = torch.randn(2, 8)
    with torch.no_grad():
        model(x)
        order = list(handle._order)
        assert torch.equal(model[1](x), plain[1](x))  # as an encoder is run alone
        assert handle._order == order  # not recorded as a pass
    handle.remove()


class PackedExperts(nn.Module):
    """Experts packed as transformers 5 packs them: 3-D parameters, a ``num_experts``
    attribute. ``whole`` uses every expert's weights in one operation (as grouped matmuls do)."""

    def __init__(self, n=6, d=16, ff=24, whole=False):
        super().__init__()
        self.num_experts = n
        self.whole = whole
        self.router = nn.Linear(d, n, bias=False)
        self.gate_up_proj = nn.Parameter(torch.randn(n, 2 * ff, d) * 0.3)
        self.down_proj = nn.Parameter(torch.randn(n, d, ff) * 0.3)

    def forward(self, x):
        top = self.router(x).argmax(-1)
        out = torch.zeros_like(x)
        if self.whole:
            gate, up = torch.einsum("td,tfd->tf", x, self.gate_up_proj[top]).chunk(2, -1)
            return torch.einsum("tf,tdf->td", F.silu(gate) * up, self.down_proj[top])
        for e in top.unique():
            rows = top == e
            gate, up = F.linear(x[rows], self.gate_up_proj[e]).chunk(2, dim=-1)
            out[rows] = F.linear(F.silu(gate) * up, self.down_proj[e])
        return out


@pytest.mark.parametrize("whole", [False, True])
def test_packed_experts_are_a_block_each_and_stay_exact(whole):
    torch.manual_seed(3)
    model = nn.Sequential(PackedExperts(whole=whole), PackedExperts(whole=whole)).eval()
    plain = copy.deepcopy(model)
    expert = (2 * 24 * 16 + 16 * 24) * 4
    # Two experts' worth of room: the rest stream.
    handle = offload(model, 3 * expert, device="cpu")
    assert len(handle._packed) == 4 and all(len(p.experts) == 6 for p in handle._packed)
    with torch.no_grad():
        # The first forward (no order declared yet, so nothing is prefetched): one token, one
        # expert a layer; its weights and the routers cross, not every expert's.
        x = torch.randn(1, 16)
        assert torch.equal(model(x), plain(x))
        one = handle.stats()["bytes_h2d"]
        for i in range(6):
            x = torch.randn(3, 16, generator=torch.Generator().manual_seed(200 + i))
            assert torch.equal(model(x), plain(x))
    routers = 2 * 6 * 16 * 4
    if not whole:
        assert one <= 2 * expert + routers, one
    assert handle.stats()["evictions"] > 0
    handle.remove()
    for (n, p), (_, q) in zip(model.named_parameters(), plain.named_parameters()):
        assert torch.equal(p, q), n
    assert torch.equal(model(x), plain(x))


def _tiny_mixtral():
    """A random in-memory Hugging Face Mixtral: 2 layers of 4 experts, 2 a token (seed 4)."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(4)
    config = transformers.MixtralConfig(
        vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        num_local_experts=4, num_experts_per_tok=2)
    return transformers.AutoModelForCausalLM.from_config(config).eval()


def test_a_hugging_face_mixtral_offloaded_in_memory_decodes_exactly():
    model = _tiny_mixtral()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.5 if p.dim() > 1 else 0.1)
    plain = copy.deepcopy(model)
    plain.set_experts_implementation("eager")
    before = model.config._experts_implementation
    handle = offload(model, nbytes(model) // 2, device="cpu")
    assert model.config._experts_implementation == "eager"
    kw = dict(max_new_tokens=10, do_sample=False, pad_token_id=0)
    prompt = torch.tensor([[1, 5, 9, 17]])
    with torch.no_grad():
        assert torch.equal(model.generate(prompt, **kw), plain.generate(prompt, **kw))
    assert handle.stats()["evictions"] > 0
    handle.remove()
    assert model.config._experts_implementation == before
    for (n, p), (_, q) in zip(model.named_parameters(), plain.named_parameters()):
        assert torch.equal(p, q), n


def test_per_expert_blocks_move_fewer_bytes_a_token_than_whole_layers():
    # The same two layers of six experts, one token at a time, through room for three experts:
    # indexed by the routed expert, a token moves that expert's blocks (and the routers); used
    # whole (a grouped matmul's gather), every expert of both layers crosses for every token.
    def per_token(whole):
        torch.manual_seed(3)
        model = nn.Sequential(PackedExperts(whole=whole), PackedExperts(whole=whole)).eval()
        expert = (2 * 24 * 16 + 16 * 24) * 4
        handle = offload(model, 3 * expert, device="cpu")
        with torch.no_grad():
            for i in range(2):
                model(torch.randn(1, 16, generator=torch.Generator().manual_seed(i)))
            before = handle.stats()["bytes_h2d"]
            for i in range(8):
                model(torch.randn(1, 16, generator=torch.Generator().manual_seed(100 + i)))
        moved = (handle.stats()["bytes_h2d"] - before) / 8
        handle.remove()
        return moved, expert
    experts, expert = per_token(False)
    whole, _ = per_token(True)
    assert experts <= 2 * expert + 2 * 6 * 16 * 4, experts  # an expert a layer, and the routers
    assert experts < whole / 4, (experts, whole)


def test_the_routers_choice_is_hinted_before_its_experts_run():
    model = _tiny_mixtral()
    plain = copy.deepcopy(model)
    plain.set_experts_implementation("eager")
    handle = offload(model, nbytes(model) // 2, device="cpu")

    class Spy:
        """The engine, recording hint_choice calls."""

        def __init__(self, engine):
            self._engine, self.hints = engine, []

        def hint_choice(self, step, choices):
            self.hints.append((step, tuple(b for b, _ in choices), tuple(p for _, p in choices)))
            return self._engine.hint_choice(step, choices)

        def __getattr__(self, name):
            return getattr(self._engine, name)

    spy = handle.engine = Spy(handle.engine)
    declared = []
    real_declare = handle._declare
    handle._declare = lambda order: (declared.append(len(order)), real_declare(order))
    with torch.no_grad():
        model(torch.tensor([[3]]))  # the first forward declares the order (nothing hinted yet)
        assert len(declared) == 1 and not spy.hints
        for token in (5, 9, 17, 33):
            spy.hints.clear()
            ids = torch.tensor([[token]])
            assert torch.equal(model(ids).logits, plain(ids).logits)
            routed = [(s, e) for s, e in enumerate(handle._pass) if isinstance(e, torch_mod._Routed)]
            # Two layers, two experts a token, gate_up and down each: 8 routed steps, each told
            # the expert it then ran, with probability 1, before it ran.
            assert len(routed) == 8
            assert [(s, e.blocks) for s, e in routed] == [(s, b) for s, b, _ in spy.hints]
            assert all(p == (1.0,) * len(p) for _, _, p in spy.hints)
        # The router picked other experts, and the order stayed declared.
        assert len(declared) == 1, declared
    handle.engine = spy._engine
    handle.remove()
