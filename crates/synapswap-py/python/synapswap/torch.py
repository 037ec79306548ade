"""``synapswap.torch.offload(model, vram_budget)``: one line to run a PyTorch model whose weights
do not fit on the device.

Every parameter and buffer becomes one engine block whose host copy is the tensor's own CPU
memory, used in place (registered with CUDA, never duplicated); the module keeps a ``meta``
placeholder of the same shape and dtype, of a tensor subclass. Two paths hand the weights to the
operations of a forward, both on device tensors that are slices of the engine's arena (one tensor
made once, sliced again only when a block moves):

- each module's own weights: its ``forward`` is wrapped, and for its duration its placeholders are
  swapped for device tensors, all held by one engine call and released (on the current stream)
  when it returns. Its operations then take plain tensors and are not intercepted: this is the
  hit path, a few engine calls a module;
- any other use (a parent reading a child's weight directly, as ``nn.MultiheadAttention`` reads
  ``out_proj.weight``; a functional call on a weight; a module whose weights do not fit on the
  device together): the placeholder's ``__torch_function__`` holds the operation's blocks for that
  operation alone. Operations, not modules, are the unit there.

A parameter that packs a layer's experts (transformers 5's 3-D ``gate_up_proj``, in a module
with ``num_experts``) is one block per expert (``_Packed``): indexing it by an expert loads that
expert alone, and any other use assembles the whole of it on the device for that operation.

A result that is a view of a weight (``.t()``, an index, a split) keeps its block held while it
lives. Operations that take no placeholder (activations) are never intercepted. Outside a forward
the placeholders compute as plain ``meta`` tensors; their metadata (shape, dtype, stride, and the
engine's device as ``device``) never loads a block.

The first forward records which blocks each module or operation takes, in order, and declares
that as the schedule, so later forwards are prefetched in deadline order. A forward that deviates
(a skipped or reordered layer, a branch) still computes the right result through demand loads,
and its order is declared for the next one. A packed expert's use is a routed step (``_Routed``):
its every expert is declared a candidate there, so the order stays declared while the router
picks other experts, and the router's top-k reaches the engine (``hint_choice``) as soon as the
experts module is called with it, before its matmuls.

Inference only: parameters are read-only; buffers may be updated in place and are written back.
On a machine without a GPU, ``device="cpu"`` runs the same path on the sim backend, whose
"device" is a host arena.
"""

from __future__ import annotations

import json as _json
import logging as _logging
import warnings as _warnings

import torch as _torch

from . import Engine, available_memory, cuda_available, model_tensors, parse_size, vram_margin

__all__ = ["offload", "from_pretrained", "OffloadHandle"]

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
    _torch.Tensor.stride,
    _torch.Tensor.element_size,
    _torch.Tensor.data_ptr,  # 0, as a meta tensor's: the block has no fixed address
    _torch.Tensor.__hash__,
}
# Where the weights are used: the engine's device, answered without a load (in a forward and
# outside one, so that `model.device` names where inputs go).
_DEVICE = {
    _torch.Tensor.device.__get__: lambda h: h.device,
    _torch.Tensor.is_cuda.__get__: lambda h: h._cuda,
    _torch.Tensor.get_device: lambda h: 0 if h._cuda else -1,
}


class _Packed:
    """A parameter that packs a layer's experts along its first dimension (transformers 5's
    ``gate_up_proj`` of shape ``[experts, 2 x intermediate, hidden]``): each expert's slice is
    made of one or more blocks (``experts[e]``, ``_Slot``s in order along the slice's first
    dimension), so that indexing the parameter by an expert loads that expert alone. An expert
    of several blocks (a checkpoint's gate and up projections, which its file does not hold side
    by side) is assembled on the device by one copy of its blocks into a tensor of the slice's
    shape; one of a single block is a view of the arena. Any other use of the parameter gets the
    whole of it, assembled expert by expert into a device tensor made for that operation."""

    __slots__ = (
        "handle", "module", "local", "name", "shape", "dtype", "experts", "original", "tensor"
    )

    def __init__(self, handle, module, local, name, shape, dtype, experts, original):
        self.handle = handle
        self.module = module
        self.local = local  # its name in its module
        self.name = name
        self.shape = tuple(shape)
        self.dtype = dtype
        self.experts = experts  # [[_Slot, ...] per expert]
        # What the module held: the tensor remove() gives back, or (bound from a checkpoint
        # that lays it out otherwise) a meta parameter, for which remove() assembles a copy.
        self.original = original
        self.tensor = None  # the placeholder the module holds


class _Routed:
    """A step of a forward's order that uses one expert of a packed parameter: which expert is
    the router's choice, so any two such steps of the same parameter are equal, and the order
    declared once stays declared while the router picks other experts. ``_declare`` declares
    every expert of the parameter at the step as a candidate; the router's choice reaches the
    engine through ``hint_choice`` (``OffloadHandle._hint_router``)."""

    __slots__ = ("packed", "blocks")

    def __init__(self, packed, blocks):
        self.packed = packed
        self.blocks = blocks  # the blocks of the expert this pass used

    def __eq__(self, other):
        return isinstance(other, _Routed) and other.packed is self.packed

    def __hash__(self):
        return id(self.packed)


class _Slot:
    """One parameter or buffer: its block and its CPU tensor (the block's host copy)."""

    __slots__ = (
        "handle", "module", "name", "is_param", "host", "block", "tensor", "original", "nbytes",
        "view", "view_ptr", "param_view",
    )

    def __init__(self, handle, module, name, is_param, host, block, tensor):
        self.handle = handle
        self.module = module
        self.name = name
        self.is_param = is_param
        self.host = host
        self.block = block
        self.tensor = tensor  # what the module holds meanwhile: a meta stand-in
        self.original = None  # the tensor it held before
        self.nbytes = host.numel() * host.element_size()
        self.view = None  # a slice of the arena tensor at view_ptr, in the tensor's dtype and shape
        self.view_ptr = None
        self.param_view = None  # the same as a Parameter, for its module's forward


def _dispatch(func, args, kwargs):
    """Every operation that takes a placeholder (``_OffloadedParameter``, ``_OffloadedBuffer``)."""
    kwargs = kwargs or {}
    used, packed = [], []
    _collect(args, used, packed)
    if kwargs:
        _collect(kwargs.values(), used, packed)
    h = used[0].handle if used else packed[0].handle if packed else None
    if h is not None and not h._removed and len(args) == 1:
        answer = _DEVICE.get(func)
        if answer is not None:
            return answer(h)
    if h is None or h._depth == 0 or h._removed or func in _METADATA:
        # Outside a forward, or only metadata: the placeholder is a plain meta tensor.
        with _torch._C.DisableTorchFunctionSubclass():
            return func(*args, **kwargs)
    if any(s.handle is not h for s in used) or any(p.handle is not h for p in packed):
        raise RuntimeError("an operation takes the weights of two offloaded models at once")
    if packed:
        expert = _expert_index(func, args, kwargs, packed)
        if expert is not None:
            return h._run_expert(packed[0], *expert)
        return h._run(func, args, kwargs, used, whole=packed)
    return h._run(func, args, kwargs, used)


def _collect(values, used, packed):
    for v in values:
        if isinstance(v, (list, tuple)):
            _collect(v, used, packed)
        elif isinstance(v, _PLACEHOLDERS):
            slot = getattr(v, "_synapswap_slot", None)
            if slot is not None and slot not in used:
                used.append(slot)
            p = getattr(v, "_synapswap_packed", None)
            if p is not None and p not in packed:
                packed.append(p)


def _expert_index(func, args, kwargs, packed):
    """``(expert, rest)`` when the operation indexes one packed parameter by one expert
    (``gate_up_proj[e]``, ``gate_up_proj[e, :, :8]``: ``e`` an int or a 0-d integer tensor,
    ``rest`` the index after it, or None); else None (a use of the whole parameter)."""
    if func is not _torch.Tensor.__getitem__ or len(packed) != 1 or kwargs or len(args) != 2:
        return None
    index, rest = args[1], None
    if isinstance(index, tuple):
        if not index:
            return None
        index, rest = index[0], (index[1:] or None)
    if isinstance(index, _torch.Tensor):
        # A 0-d integer tensor is one expert; a 1-D one is advanced indexing (a gather of
        # several: the whole parameter's path).
        if index.dim() != 0 or index.dtype.is_floating_point or index.dtype == _torch.bool:
            return None
        index = int(index.item())  # the router's choice (on CUDA: a sync, as the model's own)
    elif not isinstance(index, int) or isinstance(index, bool):
        return None
    n = len(packed[0].experts)
    if not -n <= index < n:
        raise IndexError(f"index {index} is out of bounds for {n} experts of {packed[0].name}")
    return index % n, rest


class _OffloadedParameter(_torch.nn.Parameter):
    """What a module holds for an offloaded parameter: a ``meta`` tensor of its shape and dtype
    (no memory), whose operations are handed the weight on the device during a forward."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        return _dispatch(func, args, kwargs)


class _OffloadedBuffer(_torch.Tensor):
    """As ``_OffloadedParameter``, for a buffer."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        return _dispatch(func, args, kwargs)


_PLACEHOLDERS = (_OffloadedParameter, _OffloadedBuffer)


class OffloadHandle:
    """What ``offload`` returns: ``stats()``, and ``remove()`` to undo it."""

    def __init__(self, model, engine, device):
        self.model = model
        self.engine = engine
        self.device = device
        self._slots = []
        self._packed = []  # _Packed parameters (experts' blocks)
        self._experts_before = None  # the model's experts implementation before (_eager_experts)
        self._freed = set()  # blocks remove() freed already
        self._order = []  # block tuples of each step, as last declared
        self._pass = []  # block tuples of the steps of the running forward
        self._depth = 0
        self._trainable = []  # names of parameters that require grad
        self._warned_grad = False
        self._wrapped = []  # (module, whether it had a forward of its own, that forward)
        self._own = {}  # id(module) -> the slots of its own parameters and buffers, one a block
        self._removed = False
        self._names = {}  # block -> its tensor's name in the model's state_dict (the first, if tied)
        self._cuda = device.type == "cuda"
        self._cuda_device = _torch.device("cuda", 0) if self._cuda else None
        self._unrecorded = 0  # > 0: inside a module called outside the model's forward
        arena = engine.arena()
        self._arena = _torch.from_dlpack(arena)  # the whole device arena, as uint8
        self._arena_ptr = arena.ptr
        self._arena_end = arena.ptr + arena.nbytes

    def __del__(self):
        # A model dropped without remove(): the engine must stop before the tensors whose memory
        # is its blocks' host copies are freed (its transfer thread would otherwise copy from,
        # or write buffers back into, freed memory). The handle and the model reference each
        # other, so they are collected together, and finalizers run before anything in the
        # cycle is cleared: the tensors are still alive here.
        if not getattr(self, "_removed", True):
            try:
                self.engine.shutdown()
            except Exception:
                pass

    # -- the running forward -----------------------------------------------------------------
    def _wrap_root(self, model):
        """Wraps the model's ``forward``: a pass begins and ends with it, in a ``finally``, so
        that any exception (a KeyboardInterrupt too) leaves no pass open."""
        inner = model.forward

        def forward(*args, **kwargs):
            if self._removed:
                return inner(*args, **kwargs)
            self._begin()
            done = False
            try:
                out = inner(*args, **kwargs)
                done = True
                return out
            finally:
                self._end(done)

        had = "forward" in model.__dict__
        self._wrapped.append((model, had, model.__dict__.get("forward")))
        model.forward = forward

    def _begin(self):
        if self._depth == 0:
            self._pass = []
            if self._trainable and _torch.is_grad_enabled() and not self._warned_grad:
                # The device tensors an operation gets are not the parameters autograd knows:
                # a backward would silently leave these without gradients.
                self._warned_grad = True
                _warnings.warn(
                    f"offload is for inference: {len(self._trainable)} parameter(s) require "
                    f"grad (the first: {self._trainable[0]}) and get no gradient through an "
                    f"offloaded forward; run it under torch.no_grad() (or torch.inference_mode()), "
                    f"or call model.requires_grad_(False) first",
                    stacklevel=2,
                )
        self._depth += 1

    def _end(self, done):
        # A forward that raised (not done) does not declare its partial order.
        self._depth -= 1
        if self._depth == 0 and done and not self._unrecorded and self._pass != self._order:
            self._declare(self._pass)

    def _wrap_forward(self, module):
        """Wraps ``module.forward``: for its duration the module's own weights are their device
        tensors (one engine call holds them all), so the operations of its forward take plain
        tensors and are not intercepted; then its placeholders are back and its holds released
        (a result that views one of its weights is first rehomed: ``_rehome``). A weight used
        outside its module's forward (a parent reading a child's weight directly) still reaches
        ``_dispatch``. A wrapper, not hooks: a module with hooks leaves torch's fast call path,
        which cost more than the holds. A module called outside the model's forward (an
        encoder run on its own) holds its weights the same way, unrecorded."""
        slots = self._own[id(module)]
        blocks = [s.block for s in slots]
        step_blocks = tuple(blocks)
        inner = module.forward
        engine, place, rehome, put_back = self.engine, self._place, self._rehome, self._put_back
        params, buffers = module._parameters, module._buffers
        # Where each slot's device tensor goes, and whether any is a buffer (whose put-back
        # checks for a replacement); the hit path below does no more than this per slot.
        homes = [(params if s.is_param else buffers, s.name, s) for s in slots]
        only_params = all(s.is_param for s in slots)
        arena_lo, arena_hi = self._arena_ptr, self._arena_end
        cuda = self._cuda

        def forward(*args, **kwargs):
            if self._removed:
                return inner(*args, **kwargs)
            outside = self._depth == 0
            self._depth += 1
            self._unrecorded += outside
            try:
                stream = self._stream() if cuda else None
                recorded = not self._unrecorded
                step = len(self._pass) if recorded and self._order else None
                try:
                    ptrs = engine.acquire_step(step, blocks, stream)
                except MemoryError:
                    # Its weights do not fit on the device together: its operations take them
                    # one operation at a time instead (through ``_dispatch``), as any direct use.
                    return inner(*args, **kwargs)
                try:
                    if recorded:
                        self._pass.append(step_blocks)
                    for (where, name, slot), ptr in zip(homes, ptrs):
                        if slot.view_ptr != ptr:
                            place(slot, ptr)
                        where[name] = slot.param_view
                    out = inner(*args, **kwargs)
                    if type(out) is _torch.Tensor and not (
                        arena_lo <= out.data_ptr() < arena_hi
                    ):
                        return out  # the usual result: a new tensor, nothing to rehome
                    return rehome(out, slots)
                finally:
                    try:
                        if only_params:
                            for where, name, slot in homes:
                                where[name] = slot.tensor
                        else:
                            put_back(module, slots)
                    finally:
                        engine.release_many(blocks, stream)
            finally:
                self._depth -= 1
                self._unrecorded -= outside

        had = "forward" in module.__dict__
        self._wrapped.append((module, had, module.__dict__.get("forward")))
        module.forward = forward

    def _put_back(self, module, slots):
        """The module's placeholders back in place of its device tensors. A buffer the forward
        replaced (``self.inv_freq = ...``) is copied into the block, which is still held here,
        if it has the block's shape and dtype; else it is an error, not a silent loss."""
        params, buffers = module._parameters, module._buffers
        for slot in slots:
            where = params if slot.is_param else buffers
            now = where.get(slot.name)
            if not slot.is_param and now is not slot.param_view and now is not None:
                if now.shape != slot.view.shape or now.dtype != slot.view.dtype:
                    where[slot.name] = slot.tensor
                    raise RuntimeError(
                        f"{slot.name} was replaced during the forward by a tensor of another "
                        f"shape or dtype ({tuple(now.shape)}, {now.dtype}): an offloaded buffer "
                        f"keeps its block's"
                    )
                slot.view.copy_(now)
            where[slot.name] = slot.tensor

    def _rehome(self, out, held):
        """``out`` with every tensor in it that views the arena (a weight's ``.t()``, an index,
        a split, the tensor itself) rebuilt on a DLPack view that owns a hold on its block, one
        of the slots ``held`` (those the call held): the block then stays held while that
        tensor, or any view of it (they share its storage), lives. Searched: tensors, tuples,
        lists, dicts (transformers' ``ModelOutput`` too)."""
        if isinstance(out, _torch.Tensor):
            ptr = out.data_ptr()
            if self._arena_ptr <= ptr < self._arena_end and out.numel() > 0:
                return self._owned_view(out, held)
            return out
        if isinstance(out, (list, tuple)):
            new = [self._rehome(o, held) for o in out]
            if all(a is b for a, b in zip(new, out)):
                return out
            if isinstance(out, list):
                return new
            return type(out)(*new) if hasattr(out, "_fields") else type(out)(new)
        if isinstance(out, dict):
            for k, v in list(out.items()):
                r = self._rehome(v, held)
                if r is not v:
                    out[k] = r
        return out

    def _owned_view(self, t, held):
        """``t``, a view of the bytes of one of the ``held`` slots' blocks in the arena, rebuilt
        on a DLPack tensor of that block that owns a hold of its own."""
        ptr = t.data_ptr()
        slot = next((s for s in held if s.view_ptr <= ptr < s.view_ptr + s.nbytes), None)
        if slot is None:
            # A view of another block's memory: it is not held by this call, and a weight the
            # result could read after it moved. Not expected from any operation.
            raise RuntimeError("a result views device memory of a block this call did not hold")
        view = self.engine.wait(slot.block)
        raw = _torch.from_dlpack(view)  # its own hold, released when raw's storage dies
        view.release()
        if view.ptr != slot.view_ptr:
            raise RuntimeError("an offloaded block moved while a view of it was being kept")
        elt = t.element_size()
        typed = raw.view(t.dtype)
        return typed.as_strided(t.size(), t.stride(), (ptr - slot.view_ptr) // elt)

    def _declare(self, order):
        self.engine.clear_schedule()
        for step, entry in enumerate(order):
            if isinstance(entry, _Routed):
                # Any of the n experts may be this step's: each a candidate, 1 / n per pass (a
                # parameter's m such steps give each expert m / n uses a pass). What is really
                # used, the engine learns; what the router chose, it is told.
                experts = entry.packed.experts
                for slots in experts:
                    for slot in slots:
                        self.engine.declare(step, slot.block, 1.0 / len(experts))
            else:
                for block in entry:
                    self.engine.declare(step, block)
        self._order = list(order)

    def _run(self, func, args, kwargs, used, whole=()):
        """An operation that takes the weights of ``used`` outside their modules' forwards: one
        engine call says where execution is and holds every block, the operation runs on slices
        of the arena, a result that views a weight is rehomed, and the holds are released. Each
        packed parameter of ``whole`` is assembled first, in a device tensor of its own."""
        assembled = {id(p.tensor): self._assemble(p) for p in whole}
        if not used:
            return func(
                *self._substitute(args, assembled),
                **{k: self._substitute(v, assembled) for k, v in kwargs.items()},
            )
        step, blocks = self._record(used)
        stream = self._stream()
        views = {id(s.tensor): v for s, v in zip(used, self._hold(step, blocks, used, stream))}
        views.update(assembled)
        try:
            out = func(
                *self._substitute(args, views),
                **{k: self._substitute(v, views) for k, v in kwargs.items()},
            )
            return self._rehome(out, used)
        finally:
            self.engine.release_many(blocks, stream)

    def _run_expert(self, packed, expert, rest):
        """``packed[expert]`` (then ``[rest]``, if an index follows): that expert's blocks held
        by one engine call; a single block's view is rehomed (its hold lives as long as the
        result), several are copied into one tensor of the slice's shape and released."""
        slots = packed.experts[expert]
        step, blocks = self._record(slots, routed=packed)
        stream = self._stream()
        views = self._hold(step, blocks, slots, stream)
        try:
            shape = packed.shape[1:]
            if len(slots) == 1:
                out = self._rehome(views[0].view(shape), slots)
            else:
                out = _torch.cat(views, dim=0).view(shape)
            return out if rest is None else out[rest]
        finally:
            self.engine.release_many(blocks, stream)

    def _assemble(self, packed):
        """The whole packed parameter as a device tensor of its own, filled expert by expert
        (each expert's blocks held only while they are copied)."""
        out = _torch.empty(packed.shape, dtype=packed.dtype, device=self._arena.device)
        stream = self._stream()
        for e, slots in enumerate(packed.experts):
            step, blocks = self._record(slots)
            views = self._hold(step, blocks, slots, stream)
            try:
                _join_into(out[e].view(-1), views)
            finally:
                self.engine.release_many(blocks, stream)
        return out

    def _record(self, used, routed=None):
        """Records the operation's blocks as the running forward's next step (a ``_Routed`` one
        when they are an expert of the packed parameter ``routed``). Returns the step to hint
        (None before an order is declared, or outside the model's forward) and the blocks."""
        blocks = [s.block for s in used]
        if self._unrecorded:
            return None, blocks
        step = len(self._pass)
        self._pass.append(tuple(blocks) if routed is None else _Routed(routed, tuple(blocks)))
        return (step if self._order else None), blocks

    def _wrap_router(self, module, packs):
        """Wraps the forward of a module that holds packed experts (transformers' ``...Experts``,
        called with the router's top-k index): before its matmuls, each expert the router chose
        is told to the engine (``_hint_router``), so it loads ahead of its use."""
        inner = module.forward

        def forward(*args, **kwargs):
            if not self._removed and self._order and self._depth and not self._unrecorded:
                self._hint_router(packs, args, kwargs)
            return inner(*args, **kwargs)

        had = "forward" in module.__dict__
        self._wrapped.append((module, had, module.__dict__.get("forward")))
        module.forward = forward

    def _hint_router(self, packs, args, kwargs):
        """The router's choice, from the experts module's integer argument (its top-k index): the
        experts it names, in ascending order as the experts loop runs them, go to the coming
        ``_Routed`` steps of each packed parameter in the declared order, one expert each, by
        ``hint_choice`` with probability 1."""
        index = next(
            (a for a in list(args) + list(kwargs.values())
             if isinstance(a, _torch.Tensor) and not isinstance(a, _PLACEHOLDERS)
             and not a.is_floating_point() and a.dtype != _torch.bool),
            None,
        )
        if index is None:
            return
        n = len(packs[0].experts)
        # On CUDA a sync, as the loop's own. An index out of range (a padding -1, a dropped
        # token's n) names no expert, and would shift every later one by a step.
        chosen = sorted({e for e in index.reshape(-1).tolist() if 0 <= e < n})
        want = {id(p): 0 for p in packs}
        left = len(chosen) * len(packs)
        order, step = self._order, len(self._pass)
        # The module's steps come next; a few other steps between them are walked over.
        limit = min(len(order), step + 4 * left + 8)
        while left and step < limit:
            entry = order[step]
            if isinstance(entry, _Routed) and want.get(id(entry.packed), len(chosen)) < len(chosen):
                i = want[id(entry.packed)]
                want[id(entry.packed)] = i + 1
                left -= 1
                e = chosen[i]
                experts = entry.packed.experts
                if 0 <= e < len(experts):
                    self.engine.hint_choice(step, [(s.block, 1.0) for s in experts[e]])
            step += 1

    def _stream(self):
        # On the sim backend CPU operations read the arena at once: no stream, the hold waits
        # for the bytes (a stream-ordered hold would let the op read a copy still in flight).
        return _torch.cuda.current_stream(self._cuda_device).cuda_stream if self._cuda else None

    def _hold(self, step, blocks, used, stream):
        """Hints ``step`` (unless None) and holds ``blocks`` for work on ``stream``; returns the
        slots' device tensors in order, slices of the arena tensor (remade only when a block
        moved)."""
        ptrs = self.engine.acquire_step(step, blocks, stream)
        for slot, ptr in zip(used, ptrs):
            if slot.view_ptr != ptr:
                self._place(slot, ptr)
        return [slot.view for slot in used]

    def _place(self, slot, ptr):
        """The slot's block is at ``ptr``: its device tensor, a slice of the arena, and the same
        as what its module holds during its forward (a Parameter for a parameter)."""
        at = ptr - self._arena_ptr
        flat = self._arena[at : at + slot.nbytes]
        slot.view = flat.view(slot.host.dtype).view(slot.host.shape)
        slot.param_view = (
            _torch.nn.Parameter(slot.view, requires_grad=False) if slot.is_param else slot.view
        )
        slot.view_ptr = ptr

    @staticmethod
    def _substitute(value, views):
        if isinstance(value, (list, tuple)):
            return type(value)(OffloadHandle._substitute(v, views) for v in value)
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
        # A routed expert's step names the expert that forward used (the file format has no
        # candidates).
        steps = [
            [self._names.get(b, str(b)) for b in
             (entry.blocks if isinstance(entry, _Routed) else entry)]
            for entry in self._order
        ]
        with open(path, "w") as f:
            _json.dump({"format": "synapswap-order", "version": 1, "steps": steps}, f, indent=1)

    def remove(self) -> None:
        """Gives every parameter and buffer its CPU tensor back (buffers with what the device
        last wrote) and the modules their own ``forward``. A tensor that still views an
        offloaded weight (a result kept from a forward) holds its block: then this raises
        RuntimeError having changed nothing but the buffers' CPU copies; drop that tensor and
        call it again."""
        if self._removed:
            return
        import gc

        for slot in self._slots:
            if not slot.is_param and slot.block not in self._freed:
                data = self.engine.read(slot.block)
                flat = slot.host.reshape(-1).view(_torch.uint8)
                flat.copy_(_torch.frombuffer(bytearray(data), dtype=_torch.uint8))
                if slot.original.data_ptr() != slot.host.data_ptr():
                    slot.original.copy_(slot.host)  # it was not contiguous: host was a copy
        gc.collect()  # results no longer referenced release their holds
        pieces = [s for p in self._packed for slots in p.experts for s in slots]
        held = [
            s for s in self._slots + pieces
            if s.block not in self._freed and self.engine.is_held(s.block)
        ]
        if held:
            raise RuntimeError(
                f"{held[0].name} is still viewed by a tensor from a forward (it holds its "
                f"block): delete it, then call remove() again"
            )
        for p in self._packed:
            if p.original.device.type == "meta":
                # Bound from a checkpoint that lays it out otherwise: it had no tensor of its
                # own, and gets a CPU copy assembled from its experts' host bytes.
                whole = _torch.empty(p.shape, dtype=p.dtype)
                for e, slots in enumerate(p.experts):
                    _join_into(whole[e].view(-1), [s.host for s in slots])
                p.original = _torch.nn.Parameter(whole, requires_grad=False)
        for slot in self._slots + pieces:
            if slot.block not in self._freed:
                self.engine.free(slot.block)
                self._freed.add(slot.block)
        for module, had, forward in reversed(self._wrapped):
            if had:
                module.forward = forward
            else:
                module.__dict__.pop("forward", None)
        self._wrapped = []
        for slot in self._slots:
            (slot.module._parameters if slot.is_param else slot.module._buffers)[
                slot.name
            ] = slot.original
        for p in self._packed:
            p.module._parameters[p.local] = p.original
        for slot in self._slots + pieces:
            slot.view = slot.view_ptr = slot.param_view = None
        if self._experts_before is not None:
            self.model.set_experts_implementation(self._experts_before)
        self._arena = None
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


def _join_into(flat, parts):
    """Copies the tensors ``parts`` one after another into the 1-D tensor ``flat`` (an expert's
    slice from its blocks, in order)."""
    at = 0
    for t in parts:
        n = t.numel()
        flat[at : at + n].copy_(t.reshape(-1))
        at += n


def _packs_experts(module, param):
    """Whether ``param`` packs a layer's experts (transformers 5's experts modules: a
    ``num_experts`` attribute, and 3-D parameters such as ``gate_up_proj[expert]``): its
    experts' slices become blocks of their own (``_Packed``). A router's 2-D weight is not."""
    n = getattr(module, "num_experts", None)
    return (
        isinstance(n, int) and not isinstance(n, bool) and n > 1
        and param.dim() == 3 and param.shape[0] == n and param.numel() > 0
    )


def _eager_experts(model):
    """Makes a transformers model compute its experts one by one (``experts_implementation=
    "eager"``: ``gate_up_proj[expert]`` for each expert the router chose, which loads that
    expert alone), not with grouped matmuls over every expert's weights at once. Returns what
    it was, for ``remove()`` (None: nothing changed)."""
    config = getattr(model, "config", None)
    before = getattr(config, "_experts_implementation", None)
    if before in (None, "eager") or not hasattr(model, "set_experts_implementation"):
        return None
    model.set_experts_implementation("eager")
    return before


def _device(device):
    if device is None:
        device = "cuda" if (_torch.cuda.is_available() and cuda_available()[0]) else "cpu"
    device = _torch.device(device)
    if device.type not in ("cpu", "cuda") or device.index not in (None, 0):
        raise ValueError(f"device must be 'cpu' (sim backend) or 'cuda' (device 0), not {device}")
    return device


def _check_budget(budget, tensors, packed=()):
    """Every tensor fits the budget, and every packed parameter's expert (its blocks are held
    together)."""
    largest = max((t.numel() * t.element_size() for *_, t in tensors), default=0)
    for *_, experts in packed:
        for pieces in experts:
            largest = max(largest, sum(h.numel() * h.element_size() for _, h in pieces))
    if budget < largest:
        raise ValueError(
            f"the budget ({budget} bytes) is smaller than the largest tensor ({largest} bytes)"
        )


def offload(model, vram_budget, device=None, policy="auto", sim_h2d=None, trace=False) -> OffloadHandle:
    """Streams ``model``'s parameters and buffers through ``vram_budget`` bytes of device memory
    (an int, or a string such as "4GiB"). ``device``: "cuda" (the default when a GPU is present)
    or "cpu" (the sim backend). ``sim_h2d``: on the sim, the link's pace ("25GB/s", bytes/s, or
    "max" for unpaced memcpy; default 2 GB/s + 10 us a copy; see ``Engine``). ``trace``: the
    engine records its copies (``handle.engine.take_trace()``; see ``Engine``). Returns a handle
    with ``stats()`` and ``remove()``.

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
    device = _device(device)
    # A parameter packing experts: each expert's slice (contiguous in it) is a block.
    packed = [
        (m, n, t, [[(None, t.data[e])] for e in range(t.shape[0])])
        for m, n, is_param, t in tensors
        if is_param and t.is_contiguous() and _packs_experts(m, t)
    ]
    is_packed = {id(t) for _, _, t, _ in packed}
    entries = [_entry(*t) for t in tensors if id(t[3]) not in is_packed]
    _check_budget(budget, [(None, None, None, h) for *_, h in entries], packed)
    handle = _bind(model, entries, budget, device, policy, mapped={}, sim_h2d=sim_h2d,
                   packed=packed, trace=trace)
    if packed:
        handle._experts_before = _eager_experts(model)
    return handle


def _entry(module, name, is_param, original):
    """What ``_bind`` takes for one tensor: its module and name, whether it is a parameter, the
    tensor ``remove()`` gives back, and its host copy (the tensor's own memory, or a contiguous
    copy of a tensor that is not contiguous)."""
    host = original.data if original.is_contiguous() else original.data.contiguous()
    return module, name, is_param, original, host


def _bind(
    model, entries, budget, device, policy, mapped, sim_h2d=None, packed=(), trace=False
) -> OffloadHandle:
    """Puts every ``(module, name, is_param, original, host)`` of ``entries`` on an engine of
    ``budget`` bytes: a block per distinct host range, the module holding a meta stand-in, and
    ``original`` given back by ``remove()``. Storages whose address is a key of ``mapped`` are
    mappings of the file it names (``register_mapping`` with its path: the RAM tier, which reads
    what it does not keep from the disk directly); the others are registered as buffers. Each
    ``(module, name, original, experts)`` of ``packed`` is a parameter packing experts
    (``_Packed``): ``experts[e]`` lists the host tensors of expert ``e``'s slice, in order, each
    with the name it gets in ``save_order``, as ``(name, host)``."""
    engine = Engine(
        budget, backend="cuda" if device.type == "cuda" else "sim", sim_h2d=sim_h2d, trace=trace
    )
    handle = OffloadHandle(model, engine, device)
    handle._trainable = [n for _, n, is_param, t, _ in entries if is_param and t.requires_grad]
    handle._trainable += [n for _, n, t, _ in packed if t is not None and t.requires_grad]
    # Blocks first: nothing on the model changes until every block exists.
    qualified = {}
    for mod_name, m in model.named_modules(remove_duplicate=False):
        qualified.setdefault(id(m), mod_name)
    pending, pending_packed = [], []
    blocks, storages = {}, {}

    def block_of(host, label, full_name, mutable):
        # Each storage is registered with the device once, and its tensors are blocks cut from
        # it (`alloc_external` finds the registration): tensors sharing a storage share pages,
        # which CUDA registers only once. A storage that shares a page with another one (two
        # small allocations side by side) cannot be registered; its tensors then register alone
        # or stay pageable, as before. The registrations end with their blocks.
        nbytes = host.numel() * host.element_size()
        storage = host.untyped_storage()
        if storage.data_ptr() not in storages:
            try:
                ptr = storage.data_ptr()
                storages[ptr] = (
                    engine.register_mapping(ptr, storage.nbytes(), path=mapped[ptr])
                    if ptr in mapped
                    else engine.register_buffer(ptr, storage.nbytes())
                )
            except RuntimeError as e:
                if "already registered" not in str(e):
                    raise
                storages[storage.data_ptr()] = None
        key = (host.data_ptr(), nbytes)
        if key not in blocks:  # tied weights share one block
            blocks[key] = engine.alloc_external(
                host.data_ptr(), nbytes, name=label, policy=policy, mutable=mutable
            )
        handle._names.setdefault(blocks[key], full_name)
        return blocks[key]

    try:
        for module, name, is_param, t, host in entries:
            if host.numel() == 0:
                continue
            prefix = qualified.get(id(module), "")
            full = f"{prefix}.{name}" if prefix else name
            block = block_of(host, f"{type(module).__name__}.{name}", full, not is_param)
            pending.append((module, name, is_param, t, host, block))
        for module, name, t, experts in packed:
            prefix = qualified.get(id(module), "")
            full = f"{prefix}.{name}" if prefix else name
            blocks_of = [
                [(piece, block_of(host, f"{type(module).__name__}.{name}[{e}]",
                                  piece or f"{full}[{e}]", False), host)
                 for piece, host in pieces]
                for e, pieces in enumerate(experts)
            ]
            pending_packed.append((module, name, full, t, blocks_of))
    except Exception:
        engine.shutdown()
        raise
    swapped = {}
    for module, name, is_param, t, host, block in pending:
        # The module gets a meta stand-in (same shape and dtype, no memory); the original
        # tensor, whose memory is the block's host copy, is kept for remove().
        tensor = swapped.get(id(t))
        slot = _Slot(handle, module, name, is_param, host, block, tensor)
        if tensor is None:
            meta = _torch.empty(host.shape, dtype=host.dtype, device="meta")
            if is_param:
                tensor = _OffloadedParameter(meta, requires_grad=t.requires_grad)
            else:
                tensor = _torch.Tensor._make_subclass(_OffloadedBuffer, meta)
            # The first slot of a tied tensor stands for all of its names (one block).
            tensor._synapswap_slot = slot
            swapped[id(t)] = tensor
        slot.tensor = tensor
        (module._parameters if is_param else module._buffers)[name] = tensor
        slot.original = t
        handle._slots.append(slot)
    for module, name, full, t, blocks_of in pending_packed:
        sample = blocks_of[0][0][2]
        # t, or (bound from a checkpoint) the meta parameter the model was built with.
        original = module._parameters[name]
        shape = tuple(original.shape)
        p = _Packed(handle, module, name, full, shape, sample.dtype, [], original)
        for e, pieces in enumerate(blocks_of):
            p.experts.append(
                [_Slot(handle, module, f"{name}[{e}]", True, host, block, None)
                 for _, block, host in pieces]
            )
        meta = _torch.empty(shape, dtype=sample.dtype, device="meta")
        tensor = _OffloadedParameter(meta, requires_grad=bool(t is not None and t.requires_grad))
        tensor._synapswap_packed = p
        p.tensor = tensor
        for slots in p.experts:
            for slot in slots:
                slot.tensor = tensor
        module._parameters[name] = tensor
        handle._packed.append(p)
    # Each module with weights of its own holds them for its forward (see _wrap_forward); the
    # model's forward begins and ends a pass around it all (_wrap_root). A packed parameter is
    # not among them: its experts are held by the operations that index it.
    for slot in handle._slots:
        own = handle._own.setdefault(id(slot.module), [])
        if not any(o.block == slot.block for o in own):
            own.append(slot)
    for module in {id(s.module): s.module for s in handle._slots}.values():
        handle._wrap_forward(module)
    routers = {}
    for p in handle._packed:
        routers.setdefault(id(p.module), (p.module, []))[1].append(p)
    for module, packs in routers.values():
        handle._wrap_router(module, packs)
    handle._wrap_root(model)
    setattr(model, _ATTR, handle)
    return handle


# -- from_pretrained -------------------------------------------------------------------------

# The safetensors dtypes torch can view in place.
_FILE_DTYPES = {
    "F64": _torch.float64,
    "F32": _torch.float32,
    "F16": _torch.float16,
    "BF16": _torch.bfloat16,
    "I64": _torch.int64,
    "I32": _torch.int32,
    "I16": _torch.int16,
    "I8": _torch.int8,
    "U8": _torch.uint8,
    "BOOL": _torch.bool,
}
for _name, _attr in (("F8_E4M3", "float8_e4m3fn"), ("F8_E5M2", "float8_e5m2")):
    if hasattr(_torch, _attr):
        _FILE_DTYPES[_name] = getattr(_torch, _attr)

_log = _logging.getLogger("synapswap")


class _ParamsOnMeta:
    """While active, every parameter a module registers is replaced by a meta tensor of its
    shape and dtype (what ``accelerate.init_empty_weights()`` does): building the model allocates
    no weight memory and initialises nothing, while buffers (a rotary embedding's ``inv_freq``,
    computed from the config) are made on the CPU as usual."""

    def __enter__(self):
        self._register = _torch.nn.Module.register_parameter
        register = self._register

        def on_meta(module, name, param):
            register(module, name, param)
            p = module._parameters.get(name)
            if p is not None and p.device.type != "meta":
                module._parameters[name] = _torch.nn.Parameter(
                    p.to("meta"), requires_grad=p.requires_grad
                )

        _torch.nn.Module.register_parameter = on_meta
        return self

    def __exit__(self, *exc):
        _torch.nn.Module.register_parameter = self._register
        return False


def _config_int(config, *names, default=None):
    for n in names:
        v = getattr(config, n, None)
        if isinstance(v, int) and v > 0:
            return v
    return default


def _reserve(config, dtype, max_context, device_total=None):
    """What generation needs on the device besides the weights, estimated from the config for
    one sequence of ``max_context`` tokens, the way llama.cpp's fit sizes it: the KV cache
    (2 x layers x KV heads x head size x context, in ``dtype``), the prefill's activations (the
    context times the hidden and MLP widths), its logits (context x vocabulary in float32) and
    256 MiB for the allocator and kernels' workspaces, or on a CUDA device of ``device_total``
    bytes the engine's free-memory margin (``synapswap.vram_margin``) if that is larger: the
    engine refuses a pool that leaves less free (on Windows the driver would otherwise spill
    device memory into system RAM). Returns a dict of the terms."""
    text = getattr(config, "text_config", None) or config
    layers = _config_int(text, "num_hidden_layers", "n_layer", "num_layers", default=1)
    hidden = _config_int(text, "hidden_size", "n_embd", "d_model", default=1)
    heads = _config_int(text, "num_attention_heads", "n_head", default=1)
    kv_heads = _config_int(text, "num_key_value_heads", default=heads)
    head_dim = _config_int(text, "head_dim", default=max(hidden // heads, 1))
    inter = _config_int(text, "intermediate_size", "n_inner", "ffn_dim", default=4 * hidden)
    vocab = _config_int(text, "vocab_size", default=1)
    positions = _config_int(text, "max_position_embeddings", "n_positions", default=4096)
    context = int(max_context) if max_context is not None else min(positions, 4096)
    elt = _torch.empty(0, dtype=dtype).element_size()
    kv = 2 * layers * kv_heads * head_dim * context * elt
    activations = context * (4 * hidden + 2 * inter) * elt + context * vocab * 4
    workspace = 256 << 20
    if device_total is not None:
        workspace = max(workspace, vram_margin(int(device_total)))
    return {
        "max_context": context,
        "kv_cache_bytes": kv,
        "activation_bytes": activations,
        "workspace_bytes": workspace,
        "reserve_bytes": kv + activations + workspace,
    }


def _free_bytes(device):
    """Free and total memory of the device (total ``None`` off CUDA): CUDA's, or on the sim
    backend half the host memory this process can still take (``synapswap.available_memory``,
    the engine's own figure: ``MemAvailable`` and cgroups on Linux, ``GlobalMemoryStatusEx`` on
    Windows): its arena is host memory, and the page cache under the model's files (the RAM
    tier, what a model larger than RAM streams from) needs the rest."""
    if device.type == "cuda":
        free, total = _torch.cuda.mem_get_info(device.index or 0)
        return free, total
    avail = available_memory()
    if avail is not None:
        return avail[0] // 2, None
    raise ValueError("vram_budget='auto' needs the free memory, unknown here: give a size")


def _map_file(path):
    """A private (copy-on-write), writable mapping of the whole file at ``path``.

    Not ``torch.UntypedStorage.from_file(shared=False)``: its private mapping counts against the
    kernel's overcommit limit, and one larger than RAM is refused (ENOMEM, seen for a 28 GiB file
    on 24 GiB: BENCHMARKS.md, "Models larger than RAM"). With ``MAP_NORESERVE`` the kernel
    reserves nothing for pages never written, and the engine never writes them (a page written
    after ``remove()`` is copied then; under memory pressure with nothing reserved, such a write
    can fail as SIGSEGV rather than an exception). Under strict overcommit
    (``vm.overcommit_memory = 2``) the flag is ignored and such a file is still refused, with the
    kernel's error. Linux only (x86-64 and arm64, where the flag is 0x4000; Python 3.11 does not
    name it): elsewhere the mapping is an ordinary private one, and on Windows a copy-on-write
    view is charged against the commit limit in full, so a file larger than RAM plus the page
    file is refused there."""
    import mmap
    import os
    import sys

    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            raise ValueError(f"{path} is empty")
        if sys.platform == "win32":
            return mmap.mmap(f.fileno(), size, access=mmap.ACCESS_COPY)
        # MAP_NORESERVE's value on Linux x86-64 and arm64 (Python 3.11's mmap does not name it;
        # other architectures number it differently, and go without).
        import platform

        known = sys.platform.startswith("linux") and platform.machine() in (
            "x86_64", "aarch64", "arm64")
        noreserve = getattr(mmap, "MAP_NORESERVE", 0x4000 if known else 0)
        try:
            return mmap.mmap(
                f.fileno(),
                size,
                flags=mmap.MAP_PRIVATE | noreserve,
                prot=mmap.PROT_READ | mmap.PROT_WRITE,
            )
        except OSError as e:
            raise OSError(
                e.errno,
                f"cannot map {path} ({size} bytes) privately: {e.strerror}"
                + (" (vm.overcommit_memory is strict?)" if e.errno == 12 else ""),
            ) from e


def _converted(model, tensors):
    """The file's tensors that transformers' own loading converts into a model parameter (its
    conversion mapping: ``WeightRenaming``s, then at most one ``WeightConverter``), found with
    transformers' ``rename_source_key``, as its loader does. Returns ``(renamed, converted)``:
    ``{parameter name: tensor}`` for those only renamed (Mixtral's ``block_sparse_moe.gate``
    is ``mlp.gate``), and ``{parameter name: (converter, {(source pattern index, expert):
    tensor})}``. Empty where transformers has no conversion mapping (before 5.0)."""
    import re

    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import (
            WeightConverter,
            WeightRenaming,
            rename_source_key,
        )
    except ImportError:
        return {}, {}
    try:
        from transformers.core_model_loading import apply_renamings
    except ImportError:  # pragma: no cover - present in 5.x
        def apply_renamings(key, _renamings):
            return key
    transforms = get_model_conversion_mapping(model)
    renamings = [t for t in transforms if isinstance(t, WeightRenaming)]
    converters = [t for t in transforms if isinstance(t, WeightConverter)]
    meta = model.state_dict()
    prefix = getattr(model, "base_model_prefix", None) or None
    out, renamed = {}, {}
    for key, t in tensors.items():
        target, pattern = rename_source_key(key, renamings, converters, prefix, meta)
        if pattern is None:
            if target != key:
                renamed[target] = t
            continue
        conv = next(c for c in converters if pattern in c.source_patterns)
        # The expert's number is what the pattern's `*` matched.
        regex = re.escape(pattern).replace(r"\*", r"(\d+)")
        m = re.search(regex, key) or re.search(regex, apply_renamings(key, renamings))
        if m is None or not m.groups():
            continue
        k = conv.source_patterns.index(pattern)
        out.setdefault(target, (conv, {}))[1][(k, int(m.group(1)))] = t
    return renamed, out


def _experts_from_file(name, param, converted, storages):
    """The host tensors of each expert of the packed parameter ``name`` (shape ``[experts,
    rows, ...]``), over the file's mapping: for transformers' conversions that stack each
    expert's tensor (``MergeModulelist(dim=0)``), then concatenate several of them along the
    rows (``Concatenate(dim=1)``: Mixtral's ``w1`` and ``w3`` into ``gate_up_proj``), each
    expert's slice is its tensors in the conversion's order, one block each; tensors that lie
    side by side in the file are one. Any other conversion would need a converted copy in RAM,
    and is a ValueError naming it."""
    if name not in converted:
        raise ValueError(
            f"{name} has no tensor of its own in the checkpoint, and no conversion of "
            f"transformers' makes it"
        )
    conv, parts = converted[name]
    ops = [(type(o).__name__, getattr(o, "dim", None)) for o in conv.operations]
    sources = len(conv.source_patterns)
    if ops not in ([("MergeModulelist", 0)], [("MergeModulelist", 0), ("Concatenate", 1)]) or (
        sources > 1 and len(ops) != 2
    ):
        raise ValueError(
            f"{name} is made by {ops} of {conv.source_patterns}: binding it in place would need "
            f"a converted copy in RAM (supported: experts stacked, and concatenated along rows)"
        )
    experts, elt = [], param.element_size()
    for e in range(param.shape[0]):
        pieces = []
        for k in range(sources):
            t = parts.get((k, e))
            if t is None:
                raise ValueError(f"{name}: the checkpoint has no {conv.source_patterns[k]} for "
                                 f"expert {e}")
            shape = tuple(t["shape"])
            if _FILE_DTYPES.get(t["dtype"]) != param.dtype or shape[1:] != tuple(param.shape[2:]):
                raise ValueError(
                    f"{t['name']} ({t['dtype']}, {shape}) does not fit {name} "
                    f"({param.dtype}, {tuple(param.shape)})"
                )
            if t["offset"] % elt:
                raise ValueError(f"{t['name']} is not aligned to its {elt}-byte elements")
            last = pieces[-1] if pieces else None
            if last is not None and last[0]["file"] == t["file"] and (
                last[0]["offset"] + last[1] == t["offset"]
            ):
                pieces[-1] = (last[0], last[1] + t["nbytes"], last[2] + shape[0])
            else:
                pieces.append((t, t["nbytes"], shape[0]))
        if sum(rows for *_, rows in pieces) != param.shape[1]:
            raise ValueError(f"{name}: expert {e}'s tensors do not make its {param.shape[1]} rows")
        experts.append([
            (t["name"], _torch.empty(0, dtype=param.dtype).set_(
                storages[t["file"]], t["offset"] // elt, (rows, *param.shape[2:])))
            for t, _, rows in pieces
        ])
    return experts


def _copy_buffer(b, t, storages):
    """Copies a buffer's values from the file's tensor ``t`` (None: the file has none)."""
    if t is None or _FILE_DTYPES.get(t["dtype"]) is None:
        return
    src = _torch.empty(0, dtype=_FILE_DTYPES[t["dtype"]])
    elt = src.element_size()
    if t["offset"] % elt or t["nbytes"] != b.numel() * elt:
        raise ValueError(f"buffer {t['name']} in {t['file']} does not match the model's")
    src = src.set_(storages[t["file"]], t["offset"] // elt, (b.numel(),))
    b.copy_(src.reshape(b.shape))


def from_pretrained(
    path_or_dir,
    vram_budget="auto",
    device=None,
    dtype=None,
    *,
    max_context=None,
    model_class=None,
    policy="auto",
    sim_h2d=None,
    trace=False,
    **config_kwargs,
):
    """Loads a Hugging Face model from a local directory (``config.json`` and safetensors: one
    file or shards with ``model.safetensors.index.json``), or a ``.safetensors`` file beside its
    ``config.json``, without a copy of its weights in RAM, and offloads it.

    The transformers model is built with its parameters on ``meta``; each parameter is then bound
    to its bytes in the memory-mapped file (a private, copy-on-write mapping: pages are read from
    the disk when the engine copies them, and count as page cache, not anonymous memory). The
    engine registers each file as a mapping, so its blocks are in the RAM tier: a model larger
    than RAM runs from the disk. The result is an ordinary transformers model (``generate()``
    works), with the handle as ``model._synapswap_offload``; ``handle.remove()`` gives every
    parameter a CPU tensor over the mapping.

    - ``vram_budget``: a size, or "auto": the device's free memory (on the sim backend, half the
      host's available memory: the rest is the page cache's) less a reserve for the KV cache and
      activations estimated from the config and ``max_context`` (default: the model's
      positions, at most 4096), at most the model's size. What it chose is logged
      (``logging.getLogger("synapswap")``) and kept as ``handle.budget``.
    - ``dtype``: the parameters' dtype; None (the default) is the file's. A dtype that differs
      from the file's would need a converted copy in RAM, and is a ValueError.
    - ``model_class``: default ``transformers.AutoModelForCausalLM``.
    - ``sim_h2d``: on the sim backend, the link's pace (as ``offload``); ``trace``: as ``offload``.
    - Further keyword arguments go to ``transformers.AutoConfig.from_pretrained``.

    Checkpoints laid out unlike the parameters are bound in place too, as transformers' own
    conversion mapping says they convert (5.x): a renamed tensor (Mixtral's
    ``block_sparse_moe.gate`` is ``mlp.gate``), and experts that the model packs into 3-D
    parameters (``gate_up_proj[expert]``: each expert's tensors stacked, and gate and up
    concatenated along the rows). Each expert's slice is then its own blocks (``_Packed``), and
    the model computes its experts one by one (``experts_implementation="eager"``), so that only
    the experts the router chose are loaded. A conversion that changes the bytes themselves (a
    transpose, an interleave) would need a converted copy in RAM, and is a ValueError naming
    it. Hub names are not downloaded: fetch the directory first
    (``huggingface_hub.snapshot_download``)."""
    import os

    import transformers

    path = os.fspath(path_or_dir)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such file or directory (a local model is needed)")
    directory = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
    config = transformers.AutoConfig.from_pretrained(directory, **config_kwargs)
    tensors = {t["name"]: t for t in model_tensors(path)}
    floating = [t["dtype"] for t in tensors.values() if t["dtype"] in ("F32", "F16", "BF16")]
    if dtype is None:
        if not floating:
            raise ValueError(f"{path}: no floating-point tensors to take the dtype from")
        dtype = _FILE_DTYPES[max(set(floating), key=floating.count)]
    device = _device(device)
    cls = model_class or transformers.AutoModelForCausalLM
    with _ParamsOnMeta():
        model = cls.from_config(config, dtype=dtype)
    model.eval()
    experts_before = None

    # Each file is mapped once, privately (copy-on-write: the engine only reads it; a write
    # after remove() copies the page, never the file).
    storages = {}
    for t in tensors.values():
        f = t["file"]
        if f not in storages:
            storages[f] = _torch.frombuffer(_map_file(f), dtype=_torch.uint8).untyped_storage()

    prefix = getattr(model, "base_model_prefix", "") or ""
    conversion = []  # what transformers' conversion mapping makes of the file (_converted)

    def converted():
        if not conversion:
            conversion.extend(_converted(model, tensors))
        return conversion

    def lookup(name):
        # The file's name, or the base model's (a checkpoint saved without, or with, the
        # `base_model_prefix`), or what transformers' loading renames to it.
        if name in tensors:
            return tensors[name]
        if prefix and f"{prefix}.{name}" in tensors:
            return tensors[f"{prefix}.{name}"]
        if prefix and name.startswith(prefix + ".") and name[len(prefix) + 1 :] in tensors:
            return tensors[name[len(prefix) + 1 :]]
        return converted()[0].get(name)

    # Every name a parameter has (tied weights have several; the file holds one of them).
    names, params = {}, {}
    for name, p in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), []).append(name)
        params[id(p)] = p
    owner = {
        id(p): m for m in model.modules() for p in m.parameters(recurse=False)
    }
    views = {}  # id(parameter) -> its CPU tensor over the mapping
    packed = {}  # id(parameter) -> its experts' host tensors, for _bind
    missing = []
    for pid, pnames in names.items():
        found = next((t for t in map(lookup, pnames) if t is not None), None)
        param = params[pid]
        packs = _packs_experts(owner[pid], param)
        if found is None and packs:
            packed[pid] = _experts_from_file(pnames[0], param, converted()[1], storages)
            continue
        if found is None:
            missing.append(pnames[0])
            continue
        want = _FILE_DTYPES.get(found["dtype"])
        if want != param.dtype:
            raise ValueError(
                f"{pnames[0]} is {found['dtype']} in {found['file']} but the model wants "
                f"{param.dtype}: binding it would need a converted copy in RAM (pass dtype=None "
                f"for the file's dtype)"
            )
        if tuple(found["shape"]) != tuple(param.shape):
            raise ValueError(
                f"{pnames[0]}: the file's shape {tuple(found['shape'])} is not the model's "
                f"{tuple(param.shape)}"
            )
        elt = param.element_size()
        if found["offset"] % elt:
            raise ValueError(
                f"{pnames[0]} starts at byte {found['offset']} of {found['file']}, not a "
                f"multiple of its {elt}-byte elements: torch cannot view it in place"
            )
        host = _torch.empty(0, dtype=param.dtype).set_(
            storages[found["file"]], found["offset"] // elt, tuple(param.shape)
        )
        if packs:  # a checkpoint that holds the packed parameter as it is
            packed[pid] = [[(None, host[e])] for e in range(param.shape[0])]
            continue
        views[pid] = _torch.nn.Parameter(host, requires_grad=False)
    if missing:
        raise ValueError(
            f"{len(missing)} parameter(s) have no tensor of their own in {path}, and are not "
            f"experts a conversion of transformers' packs: " + ", ".join(missing[:5])
        )
    if packed:
        experts_before = _eager_experts(model)
    # Persistent buffers the file holds take its values (small); the others keep the ones the
    # model computed when it was built.
    for mod_name, module in model.named_modules():
        for local, b in module.named_buffers(recurse=False):
            if local in module._non_persistent_buffers_set:
                continue
            name = f"{mod_name}.{local}" if mod_name else local
            _copy_buffer(b, lookup(name), storages)

    entries = [
        _entry(module, name, is_param, views[id(t)] if is_param else t)
        for module, name, is_param, t in _tensors(model)
        if not (is_param and id(t) in packed)
    ]
    packed_entries = [
        (module, name, None, packed[id(t)])
        for module, name, is_param, t in _tensors(model)
        if is_param and id(t) in packed
    ]
    weight_bytes = sum(v.numel() * v.element_size() for v in views.values()) + sum(
        h.numel() * h.element_size()
        for experts in packed.values() for pieces in experts for _, h in pieces
    )
    budget_report = None
    if isinstance(vram_budget, str) and vram_budget == "auto":
        free, device_total = _free_bytes(device)
        budget_report = _reserve(config, dtype, max_context, device_total)
        total = weight_bytes + sum(
            h.numel() * h.element_size() for _, _, is_param, _, h in entries if not is_param
        )
        budget = min(free - budget_report["reserve_bytes"], total)
        budget_report.update(free_bytes=free, vram_budget_bytes=budget)
        if budget <= 0:
            raise ValueError(
                f"vram_budget='auto': {free} bytes free on {device}, less a reserve of "
                f"{budget_report['reserve_bytes']} bytes for the KV cache and activations "
                f"(max_context={budget_report['max_context']}) leaves nothing for weights: "
                f"give a smaller max_context or a size"
            )
        _log.info("synapswap: vram_budget='auto' chose %s", budget_report)
    else:
        budget = parse_size(vram_budget) if isinstance(vram_budget, str) else int(vram_budget)
    _check_budget(budget, [(None, None, None, h) for *_, h in entries], packed_entries)
    mapped = {s.data_ptr(): f for f, s in storages.items()}
    handle = _bind(
        model, entries, budget, device, policy, mapped, sim_h2d=sim_h2d, packed=packed_entries,
        trace=trace,
    )
    handle._experts_before = experts_before
    # What the engine made of it (its pool rounds down to whole granules).
    handle.budget = dict(budget_report or {}, vram_budget_bytes=handle.engine.vram_budget)
    # (The storages keep their mappings alive, as every tensor over them does; nothing closes
    # a mapping while one lives.)
    handle._storages = storages
    return model
