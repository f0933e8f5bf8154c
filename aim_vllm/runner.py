"""Make vLLM's model runners take the pruning path (recompute M-RoPE positions from the embeddings) for AIM models.

The GPU runner turns it on only when `--video-pruning-rate` is set, and the CPU runner's own `load_model` never
does (so vLLM's EVS fails on CPU with a size mismatch). After loading, this also turns it on for a model that
declares `aim_merging`, and, on the CPU runner, wherever vLLM's own pruning is configured.
"""

from __future__ import annotations

import functools
from typing import Any


def enable_pruning_path() -> None:
    """Wrap the V1 CPU and GPU runners' `load_model` (once per process)."""
    from vllm.v1.worker.cpu_model_runner import CPUModelRunner
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    for runner in (GPUModelRunner, CPUModelRunner):
        if "load_model" in vars(runner) and not getattr(runner.load_model, "_aim_wrapped", False):
            runner.load_model = _with_pruning_flag(runner.load_model)


def _with_pruning_flag(load_model: Any) -> Any:
    from vllm.model_executor.models.interfaces import supports_multimodal_pruning

    @functools.wraps(load_model)
    def wrapped(self: Any, *args: Any, **kwargs: Any) -> None:
        load_model(self, *args, **kwargs)
        model = self.get_model()
        mm_config = self.model_config.multimodal_config
        configured = mm_config is not None and mm_config.is_multimodal_pruning_enabled()
        if supports_multimodal_pruning(model) and (configured or getattr(model, "aim_merging", False)):
            self.is_multimodal_pruning_enabled = True

    wrapped._aim_wrapped = True  # type: ignore[attr-defined]
    return wrapped
