"""Which SDPA kernels the engine lets the model use while it runs the vision tower and generates.

PyTorch's cuDNN attention backend builds an execution graph for every new pair of sequence lengths it meets (about
40 ms each on an H200, torch 2.11) and keeps the graphs per thread. Decoding meets a new key length at every step,
and pruning gives the layers of one step several different lengths, so on a GPU that picks cuDNN a pruned answer
spent most of its time building graphs and ran slower than no reduction (`benchmarks/latency.py` on a GPU). The
vision towers pay the same in every new thread, more so when merged (Qwen2.5-VL's merged windows have several
lengths): on an H200, a fresh thread encoded 16 frames with Qwen2.5-VL-3B's merged tower about 3x slower with cuDNN
than without. The FlashAttention and memory-efficient backends need no graph, so the engine runs the tower and
generation with cuDNN's switched off. A CPU has no cuDNN backend: nothing changes there.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch

# The switch is process-wide and answers run in their own threads, so the first to enter turns it off and the last
# to leave restores it (saving and restoring per answer would leave it off when two answers overlap).
_lock = threading.Lock()
_inside = 0
_cudnn_was_enabled = True


@contextmanager
def graph_free_attention() -> Iterator[None]:
    """Inside `with`, SDPA does not use its cuDNN backend (see the module docstring); safe across threads."""
    global _inside, _cudnn_was_enabled
    with _lock:
        if _inside == 0:
            _cudnn_was_enabled = torch.backends.cuda.cudnn_sdp_enabled()
            torch.backends.cuda.enable_cudnn_sdp(False)
        _inside += 1
    try:
        yield
    finally:
        with _lock:
            _inside -= 1
            if _inside == 0:
                torch.backends.cuda.enable_cudnn_sdp(_cudnn_was_enabled)
