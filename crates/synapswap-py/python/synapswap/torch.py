"""``synapswap.torch.offload(model, vram_budget)``: one line to run a PyTorch model whose weights
do not fit on the device.

Every parameter and buffer becomes one engine block whose host copy is the tensor's own CPU
memory, used in place (registered with CUDA, never duplicated); the module keeps a ``meta``
placeholder of the same shape and dtype. While the model's forward runs, a torch-function mode
sees every tensor operation: an operation that takes one of these tensors gets a device view
instead (DLPack), waited for by the engine, and the view is released (on the current stream) when
the operation's result no longer needs it. Operations, not modules, are the unit, so a module that
reads a child's weights directly (``nn.MultiheadAttention`` reads ``out_proj.weight``) or a
functional call on a weight works like any other.

The first forward records which blocks each weight-using operation takes, in order, and declares
that as the schedule, so later forwards are prefetched in deadline order. A forward that deviates
(a skipped or reordered layer, a branch, a router picking experts) still computes the right result
through demand loads, and its order is declared for the next one.

Inference only: parameters are read-only; buffers may be updated in place and are written back.
On a machine without a GPU, ``device="cpu"`` runs the same path on the sim backend, whose
"device" is a host arena.
"""

from __future__ import annotations

import json as _json

import torch as _torch
from torch.overrides import TorchFunctionMode as _TorchFunctionMode

from . import Engine, cuda_available, parse_size

__all__ = ["offload", "OffloadHandle"]

_ATTR = "_synapswap_offload"

# Operations that only read a tensor's metadata: answered by the meta placeholder, no load.
_METADATA = {
    _torch.Tensor.dim,
    _torch.Tensor.size,
    _torch.Tensor.numel,
    _torch.Tensor.is_contiguous,
    _torch.Tensor.is_floating_point,
    _torch.Tensor.__len__,
    _torch.Tensor.shape.__get__,
    _torch.Tensor.dtype.__get__,
    _torch.Tensor.ndim.__get__,
    _torch.Tensor.requires_grad.__get__,
    _torch.Tensor.is_nested.__get__,
}


class _Slot:
    """One parameter or buffer: its block and its CPU tensor (the block's host copy)."""

    __slots__ = ("module", "name", "is_param", "host", "block", "tensor", "original")

    def __init__(self, module, name, is_param, host, block, tensor):
        self.module = module
        self.name = name
        self.is_param = is_param
        self.host = host
        self.block = block
        self.tensor = tensor  # what the module holds meanwhile: a meta stand-in
        self.original = None  # the tensor it held before


class _Mode(_TorchFunctionMode):
    def __init__(self, handle):
        super().__init__()
        self.handle = handle

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _METADATA:
            return func(*args, **kwargs)
        h = self.handle
        used = []
        h._collect(args, used)
        h._collect(kwargs.values(), used)
        if not used:
            return func(*args, **kwargs)
        views = h._views(used)
        args = h._substitute(args, views)
        kwargs = {k: h._substitute(v, views) for k, v in kwargs.items()}
        return func(*args, **kwargs)


class OffloadHandle:
    """What ``offload`` returns: ``stats()``, and ``remove()`` to undo it."""

    def __init__(self, model, engine, device):
        self.model = model
        self.engine = engine
        self.device = device
        self._slots = []
        self._by_id = {}
        self._hooks = []
        self._order = []  # block tuples of each step, as last declared
        self._pass = []  # block tuples of the steps of the running forward
        self._depth = 0
        self._mode = None
        self._removed = False
        self._names = {}  # block -> its tensor's name in the model's state_dict (the first, if tied)

    # -- the running forward -----------------------------------------------------------------
    def _begin(self, module, args):
        if self._depth == 0:
            self._pass = []
            self._mode = _Mode(self)
            self._mode.__enter__()
        self._depth += 1

    def _end(self, module, args, output):
        self._depth -= 1
        if self._depth == 0:
            mode, self._mode = self._mode, None
            mode.__exit__(None, None, None)
            if self._pass != self._order:
                self._declare(self._pass)
        return output

    def _declare(self, order):
        self.engine.clear_schedule()
        for step, blocks in enumerate(order):
            for block in blocks:
                self.engine.declare(step, block)
        self._order = list(order)

    def _collect(self, values, used):
        for v in values:
            if isinstance(v, (list, tuple)):
                self._collect(v, used)
            else:
                slot = self._by_id.get(id(v))
                if slot is not None and v is slot.tensor and slot not in used:
                    used.append(slot)

    def _views(self, used):
        step = len(self._pass)
        blocks = tuple(s.block for s in used)
        self._pass.append(blocks)
        if self._order:
            self.engine.hint(step)
        views = {}
        for slot in used:
            view = self.engine.wait(slot.block)
            raw = _torch.from_dlpack(view)
            # The tensor holds its own reference to the block, released when it is freed.
            view.release()
            views[id(slot.tensor)] = raw.view(slot.host.dtype).view(slot.host.shape)
        return views

    def _substitute(self, value, views):
        if isinstance(value, (list, tuple)):
            return type(value)(self._substitute(v, views) for v in value)
        t = views.get(id(value))
        return value if t is None else t

    # -- public ------------------------------------------------------------------------------
    def stats(self) -> dict:
        """Engine statistics: bytes_h2d, hit_rate, stall_s, evictions, peak_device_bytes,
        vram_budget_bytes, and more."""
        return dict(self.engine.stats())

    def save_order(self, path) -> None:
        """Writes the order the last forward used its tensors in, as JSON: ``{"steps": [[name,
        ...], ...]}``, one step per operation, with each tensor's name in the model's
        ``state_dict``. ``synapswap run --model FILE --order PATH`` and ``synapswap plan --order
        PATH`` run a model file in that order (names cannot give every model's order: a UNet's
        down and up blocks interleave, an encoder-decoder runs in two halves)."""
        if not self._order:
            raise RuntimeError("no forward has run yet: there is no order to save")
        steps = [[self._names[b] for b in blocks] for blocks in self._order]
        with open(path, "w") as f:
            _json.dump({"format": "synapswap-order", "version": 1, "steps": steps}, f, indent=1)

    def remove(self) -> None:
        """Removes the hooks and gives every parameter and buffer its CPU tensor back (buffers
        with what the device last wrote)."""
        if self._removed:
            return
        for h in self._hooks:
            h.remove()
        for slot in self._slots:
            if not slot.is_param:
                data = self.engine.read(slot.block)
                flat = slot.host.reshape(-1).view(_torch.uint8)
                flat.copy_(_torch.frombuffer(bytearray(data), dtype=_torch.uint8))
        freed = set()
        for slot in self._slots:
            (slot.module._parameters if slot.is_param else slot.module._buffers)[
                slot.name
            ] = slot.original
            if slot.block not in freed:
                self.engine.free(slot.block)
                freed.add(slot.block)
        self.engine.shutdown()
        delattr(self.model, _ATTR)
        self._removed = True


def _tensors(model):
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            yield module, name, True, p
        for name, b in module.named_buffers(recurse=False):
            if b is not None:
                yield module, name, False, b


def offload(model, vram_budget, device=None, policy="auto") -> OffloadHandle:
    """Streams ``model``'s parameters and buffers through ``vram_budget`` bytes of device memory
    (an int, or a string such as "4GiB"). ``device``: "cuda" (the default when a GPU is present)
    or "cpu" (the sim backend). Returns a handle with ``stats()`` and ``remove()``.

    Errors leave the model as it was: a non-Module (TypeError), a model already offloaded
    (RuntimeError), a model with tensors not in CPU memory (ValueError), a budget smaller than
    the largest tensor (ValueError)."""
    if not isinstance(model, _torch.nn.Module):
        raise TypeError(f"offload needs a torch.nn.Module, not {type(model).__name__}")
    if hasattr(model, _ATTR):
        raise RuntimeError("this model is already offloaded (call handle.remove() first)")
    tensors = list(_tensors(model))
    for _, name, _, t in tensors:
        if t.device.type != "cpu":
            raise ValueError(
                f"{name} is on {t.device}: offload a model whose weights are in CPU memory"
            )
    budget = parse_size(vram_budget) if isinstance(vram_budget, str) else int(vram_budget)
    largest = max((t.numel() * t.element_size() for *_, t in tensors), default=0)
    if budget < largest:
        raise ValueError(
            f"the budget ({budget} bytes) is smaller than the largest tensor ({largest} bytes)"
        )
    if device is None:
        device = "cuda" if (_torch.cuda.is_available() and cuda_available()[0]) else "cpu"
    device = _torch.device(device)
    if device.type not in ("cpu", "cuda") or device.index not in (None, 0):
        raise ValueError(f"device must be 'cpu' (sim backend) or 'cuda' (device 0), not {device}")
    engine = Engine(budget, backend="cuda" if device.type == "cuda" else "sim")
    handle = OffloadHandle(model, engine, device)
    # Blocks first: nothing on the model changes until every block exists.
    qualified = {}
    for mod_name, m in model.named_modules(remove_duplicate=False):
        qualified.setdefault(id(m), mod_name)
    pending = []
    try:
        blocks = {}
        # Each storage is registered with the device once, and its tensors are blocks cut from
        # it (`alloc_external` finds the registration): tensors sharing a storage share pages,
        # which CUDA registers only once. A storage that shares a page with another one (two
        # small allocations side by side) cannot be registered; its tensors then register alone
        # or stay pageable, as before. The registrations end with their blocks.
        storages = {}
        for module, name, is_param, t in tensors:
            host = t.data if t.is_contiguous() else t.data.contiguous()
            nbytes = host.numel() * host.element_size()
            if nbytes == 0:
                continue
            storage = host.untyped_storage()
            if storage.data_ptr() not in storages:
                try:
                    storages[storage.data_ptr()] = engine.register_buffer(
                        storage.data_ptr(), storage.nbytes()
                    )
                except RuntimeError as e:
                    if "already registered" not in str(e):
                        raise
                    storages[storage.data_ptr()] = None
            key = (host.data_ptr(), nbytes)
            if key not in blocks:  # tied weights share one block
                blocks[key] = engine.alloc_external(
                    host.data_ptr(),
                    nbytes,
                    name=f"{type(module).__name__}.{name}",
                    policy=policy,
                    mutable=not is_param,
                )
            prefix = qualified.get(id(module), "")
            handle._names.setdefault(blocks[key], f"{prefix}.{name}" if prefix else name)
            pending.append((module, name, is_param, t, host, blocks[key]))
    except Exception:
        engine.shutdown()
        raise
    swapped = {}
    for module, name, is_param, t, host, block in pending:
        # The module gets a meta stand-in (same shape and dtype, no memory); the original
        # tensor, whose memory is the block's host copy, is kept for remove().
        tensor = swapped.get(id(t))
        if tensor is None:
            meta = _torch.empty(host.shape, dtype=host.dtype, device="meta")
            tensor = _torch.nn.Parameter(meta, requires_grad=t.requires_grad) if is_param else meta
            swapped[id(t)] = tensor
        (module._parameters if is_param else module._buffers)[name] = tensor
        slot = _Slot(module, name, is_param, host, block, tensor)
        slot.original = t
        handle._slots.append(slot)
        handle._by_id[id(tensor)] = slot
    handle._hooks.append(model.register_forward_pre_hook(handle._begin))
    handle._hooks.append(model.register_forward_hook(handle._end))
    setattr(model, _ATTR, handle)
    return handle
