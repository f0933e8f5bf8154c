"""The `vllm.general_plugins` entry point: vLLM calls `register()` in each of its processes."""

from __future__ import annotations

from .config import default_keep

ARCHITECTURES = {
    "Qwen2_5_VLForConditionalGeneration": "aim_vllm.models:AIMQwen2_5_VLForConditionalGeneration",
    "Qwen3VLForConditionalGeneration": "aim_vllm.models:AIMQwen3VLForConditionalGeneration",
}


def register() -> None:
    """With `AIM_VLLM_MERGE_KEEP` set below 1, serve Qwen2.5-VL and Qwen3-VL with AIM's merging; else do nothing."""
    if default_keep() is None:
        return
    from vllm import ModelRegistry

    from .runner import enable_pruning_path

    for architecture, model_class in ARCHITECTURES.items():
        ModelRegistry.register_model(architecture, model_class)  # lazily: no CUDA at import
    enable_pruning_path()
