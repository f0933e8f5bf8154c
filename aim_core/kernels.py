"""Which SDPA kernels the engine lets the model use while it generates.

PyTorch's cuDNN attention backend builds an execution graph for every new pair of sequence lengths it meets (about
40 ms each on an H200, torch 2.11) and keeps the graphs per thread. Decoding meets a new key length at every step,
and pruning gives the layers of one step several different lengths, so on a GPU that picks cuDNN a pruned answer
spent most of its time building graphs and ran slower than no reduction (`benchmarks/latency.py` on a GPU). The
FlashAttention and memory-efficient backends need no graph, so generation runs on them and on the math fallback.
On a CPU these are the backends SDPA uses anyway.
"""

from __future__ import annotations

from contextlib import AbstractContextManager

from torch.nn.attention import SDPBackend, sdpa_kernel

GRAPH_FREE_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


def graph_free_attention() -> AbstractContextManager[None]:
    """Inside `with`, SDPA picks among the backends that need no per-shape graph (see the module docstring)."""
    return sdpa_kernel(GRAPH_FREE_BACKENDS)
