"""SynapSwap: run models whose weights do not fit in GPU memory.

Weights stay in host RAM; a bounded device pool holds what the next steps need, and a transfer
thread copies blocks in ahead of use. ``Engine`` is the engine itself; ``synapswap.torch.offload``
puts a PyTorch model on it in one line.
"""

from ._synapswap import (
    DeviceView,
    available_memory,
    Engine,
    HostBuffer,
    cuda_available,
    model_tensors,
    parse_size,
    vram_margin,
)

__all__ = ["Engine", "DeviceView", "HostBuffer", "parse_size", "cuda_available", "model_tensors",
           "vram_margin", "available_memory"]
__version__ = "0.1.0"
